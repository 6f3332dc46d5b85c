//! Finds the line each policy in a Cedar file starts on, so load errors can
//! point at it (Cedar's public API does not expose policy source locations).

/// Start lines (1-based) of the top-level statements in `src`, in order.
/// Statements end with `;` outside strings, comments and brackets; the scan
/// only needs to agree with Cedar on files Cedar accepted.
pub(crate) fn statement_lines(src: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut line = 1usize;
    let mut depth = 0i32;
    let mut in_statement = false;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '"' => {
                if !in_statement {
                    in_statement = true;
                    lines.push(line);
                }
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                    }
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() => {}
            c => {
                if !in_statement {
                    in_statement = true;
                    lines.push(line);
                }
                match c {
                    '(' | '{' | '[' => depth += 1,
                    ')' | '}' | ']' => depth -= 1,
                    ';' if depth == 0 => in_statement = false,
                    _ => {}
                }
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_starts_past_comments_and_strings() {
        let src = "// header; with a semicolon\n\npermit(principal, action, resource);\n\n@id(\"x;y\")\n@approvers(\"security\")\npermit(principal, action, resource)\nwhen { context.a == \"};\" };\nforbid(principal, action, resource);";
        assert_eq!(statement_lines(src), vec![3, 5, 9]);
    }
}
