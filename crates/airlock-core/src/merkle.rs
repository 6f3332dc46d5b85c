//! The RFC 6962 (RFC 9162 §2.1) Merkle tree over the audit log, with no
//! I/O: leaf and node hashes, the tree head of any size, inclusion and
//! consistency proofs, and their verification, so the server, the CLI and
//! an auditor with nothing but an export all compute the same thing.
//!
//! Proofs are built from *perfect* subtrees (2^level leaves starting at a
//! multiple of 2^level), which the store keeps as records are appended:
//! any proof then needs O(log n) stored hashes, never the whole log.

use sha2::{Digest, Sha256};

/// A node or leaf hash.
pub type Hash = [u8; 32];

/// SHA-256(0x00 ‖ bytes): a leaf's hash.
pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    h.finalize().into()
}

/// SHA-256(0x01 ‖ left ‖ right): an interior node's hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Asked about leaves or sizes the tree does not have.
    #[error("out of range: {0}")]
    Range(String),
    /// A stored node is missing (the store is incomplete).
    #[error("missing node at level {level}, index {index}")]
    Missing {
        /// Its level (0 = leaves).
        level: u32,
        /// Its index at that level.
        index: u64,
    },
    /// The proof does not prove what it claims.
    #[error("the proof does not verify")]
    Invalid,
}

/// Where perfect-subtree hashes come from: `(level, index)` is the root of
/// leaves `[index·2^level, (index+1)·2^level)`.
pub trait Nodes {
    /// That subtree's hash, if stored.
    fn node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, ProofError>;
}

impl<F: FnMut(u32, u64) -> Option<Hash>> Nodes for F {
    fn node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, ProofError> {
        Ok(self(level, index))
    }
}

fn need(nodes: &mut dyn Nodes, level: u32, index: u64) -> Result<Hash, ProofError> {
    nodes
        .node(level, index)?
        .ok_or(ProofError::Missing { level, index })
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[a:b]) from perfect subtrees.
fn subtree(nodes: &mut dyn Nodes, a: u64, b: u64) -> Result<Hash, ProofError> {
    let n = b - a;
    if n.is_power_of_two() && a.is_multiple_of(n) {
        return need(nodes, n.trailing_zeros(), a >> n.trailing_zeros());
    }
    let k = split(n);
    let left = subtree(nodes, a, a + k)?;
    let right = subtree(nodes, a + k, b)?;
    Ok(node_hash(&left, &right))
}

/// The tree head (root) of the first `size` leaves.
pub fn root(nodes: &mut dyn Nodes, size: u64) -> Result<Hash, ProofError> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree(nodes, 0, size)
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 9162
/// §2.1.3.1).
pub fn inclusion_proof(
    nodes: &mut dyn Nodes,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf {index} is not in a tree of {size}"
        )));
    }
    let mut out = Vec::new();
    path(nodes, index, 0, size, &mut out)?;
    Ok(out)
}

fn path(
    nodes: &mut dyn Nodes,
    m: u64,
    a: u64,
    b: u64,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = b - a;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(nodes, m, a, a + k, out)?;
        out.push(subtree(nodes, a + k, b)?);
    } else {
        path(nodes, m - k, a + k, b, out)?;
        out.push(subtree(nodes, a, a + k)?);
    }
    Ok(())
}

/// The consistency proof between the trees of `old` and `new` leaves (RFC
/// 9162 §2.1.4.1).
pub fn consistency_proof(
    nodes: &mut dyn Nodes,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::Range(format!(
            "no consistency proof from {old} to {new}"
        )));
    }
    let mut out = Vec::new();
    if old < new {
        subproof(nodes, old, 0, new, true, &mut out)?;
    }
    Ok(out)
}

fn subproof(
    nodes: &mut dyn Nodes,
    m: u64,
    a: u64,
    b: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = b - a;
    if m == n {
        if !whole {
            out.push(subtree(nodes, a, b)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(nodes, m, a, a + k, whole, out)?;
        out.push(subtree(nodes, a + k, b)?);
    } else {
        subproof(nodes, m - k, a + k, b, false, out)?;
        out.push(subtree(nodes, a, a + k)?);
    }
    Ok(())
}

/// Checks that `leaf` is leaf `index` of the tree of `size` with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Invalid);
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::Invalid);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::Invalid)
    }
}

/// Checks that the tree of `new` leaves with `new_root` extends the tree of
/// `old` leaves with `old_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::Invalid);
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Invalid)
        };
    }
    let mut proof = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::Invalid);
    };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::Invalid);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n == 0 && f_r == *old_root && s_r == *new_root {
        Ok(())
    } else {
        Err(ProofError::Invalid)
    }
}

/// The perfect subtrees a tree of `size` leaves ends with, largest first:
/// what an append needs to extend it (the "frontier").
pub fn frontier_positions(size: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut start = 0u64;
    for level in (0..64u32).rev() {
        if size & (1 << level) != 0 {
            out.push((level, start >> level));
            start += 1 << level;
        }
    }
    out
}

/// A perfect subtree's place in the tree read left to right (in order:
/// leaf `i` at `2i`, each parent between its two children), or `None` past
/// 2^62 leaves. A store keyed by it keeps every append's new subtrees
/// (its leaf at `2i`, its completed parents just left of it) at the right
/// edge of one index, where a key of `(level, index)` puts them in one
/// place per level: a SQLite commit of one record wrote 6.7 pages with
/// that key and two indexes, and about half as many with this one
/// (docs/PERFORMANCE.md).
pub fn in_order_position(level: u32, index: u64) -> Option<u64> {
    if level >= 62 {
        return None;
    }
    let width = 1u64 << level;
    index
        .checked_mul(width << 1)?
        .checked_add(width - 1)
        .filter(|p| *p < 1 << 63)
}

/// How many leaves a tree has whose last stored subtree sits at the in
/// order position `last` (see [`in_order_position`]): the last leaf is
/// always the rightmost, so `last` must be a leaf's (even) position.
pub fn leaves_below(last: u64) -> Option<u64> {
    last.is_multiple_of(2).then_some(last / 2 + 1)
}

/// Appends one leaf to a frontier (as [`frontier_positions`] lists it,
/// with hashes): the new perfect subtrees it completes, leaf first, which
/// the store keeps.
pub fn append(
    frontier: &mut Vec<(u32, u64, Hash)>,
    leaf_index: u64,
    leaf: Hash,
) -> Vec<(u32, u64, Hash)> {
    let mut made = vec![(0, leaf_index, leaf)];
    frontier.push((0, leaf_index, leaf));
    while frontier.len() >= 2 {
        let n = frontier.len();
        let (l_level, l_index, l_hash) = frontier[n - 2];
        let (r_level, _, r_hash) = frontier[n - 1];
        if l_level != r_level {
            break;
        }
        frontier.truncate(n - 2);
        let parent = (l_level + 1, l_index >> 1, node_hash(&l_hash, &r_hash));
        frontier.push(parent);
        made.push(parent);
    }
    made
}

/// The right edge of a tree: one hash per perfect subtree it ends with,
/// enough to append and to give the root, in O(log n) memory. What an
/// offline verifier keeps while it streams a log of any length.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (level, hash), largest subtree first.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(level, left)) = self.nodes.last() {
            if level != node.0 {
                break;
            }
            self.nodes.pop();
            node = (level + 1, node_hash(&left, &node.1));
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree of every leaf pushed so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, last)) = it.next() else {
            return empty_root();
        };
        it.fold(last, |right, (_, left)| node_hash(left, &right))
    }
}

/// A whole tree in memory, from its leaf hashes: for proofs in tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        loop {
            let len = self.levels[level].len();
            if !len.is_multiple_of(2) {
                break;
            }
            let parent = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }
}

impl Nodes for MemoryTree {
    fn node(&mut self, level: u32, index: u64) -> Result<Option<Hash>, ProofError> {
        Ok(self
            .levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_positions_are_distinct_and_appends_stay_at_the_right_edge() {
        let mut frontier = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000u64 {
            let made = append(&mut frontier, i, leaf_hash(&i.to_be_bytes()));
            let leaf = in_order_position(0, i).unwrap();
            assert_eq!(leaf, 2 * i);
            for (level, index, _) in made {
                let p = in_order_position(level, index).unwrap();
                assert!(seen.insert(p), "position {p} given twice");
                // A parent sits between its children, so left of the new
                // leaf and right of every leaf before the subtree.
                assert!(
                    p <= leaf && p + (1 << level) > leaf,
                    "{level}/{index} at {p}"
                );
            }
            assert_eq!(seen.iter().next_back().copied(), Some(leaf));
            assert_eq!(leaves_below(leaf), Some(i + 1));
        }
        assert_eq!(in_order_position(1, 0), Some(1));
        assert_eq!(in_order_position(2, 1), Some(11));
        assert_eq!(in_order_position(62, 0), None);
        assert_eq!(in_order_position(0, u64::MAX / 2), None);
        assert_eq!(leaves_below(3), None);
    }

    #[test]
    fn the_frontier_has_the_root_of_the_whole_tree() {
        let mut whole = MemoryTree::new();
        let mut edge = Frontier::default();
        assert_eq!(edge.root(), empty_root());
        for i in 0..300u32 {
            let leaf = leaf_hash(&i.to_be_bytes());
            whole.push(leaf);
            edge.push(leaf);
            assert_eq!(edge.size(), u64::from(i) + 1);
            assert_eq!(
                Ok(edge.root()),
                root(&mut whole, edge.size()),
                "size {}",
                i + 1
            );
            assert!(edge.nodes.len() <= 9);
        }
    }

    /// The eight leaves of the RFC 6962 reference vectors (certificate
    /// transparency's `merkle_tree_test`, transparency-dev's `testonly`).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Their tree heads for sizes 1 to 8.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn tree(n: usize) -> MemoryTree {
        let mut t = MemoryTree::new();
        for l in &LEAVES[..n] {
            t.push(leaf_hash(l));
        }
        t
    }

    #[test]
    fn tree_heads_match_the_reference_vectors() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for n in 1..=8 {
            let mut t = tree(8);
            assert_eq!(
                hex::encode(root(&mut t, n as u64).unwrap()),
                ROOTS[n - 1],
                "size {n}"
            );
        }
    }

    /// Reference inclusion proofs (leaf 0 of 1, leaf 0 of 8, leaf 5 of 8,
    /// leaf 2 of 3, leaf 1 of 5).
    #[test]
    fn inclusion_proofs_match_the_reference_vectors_and_verify() {
        let cases: [(u64, u64, &[&str]); 5] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let mut t = tree(8);
        for (index, size, want) in cases {
            let proof = inclusion_proof(&mut t, index, size).unwrap();
            let got: Vec<String> = proof.iter().map(hex::encode).collect();
            assert_eq!(got, want, "leaf {index} of {size}");
            let r = root(&mut t, size).unwrap();
            let leaf = leaf_hash(LEAVES[index as usize]);
            verify_inclusion(&leaf, index, size, &proof, &r).unwrap();
            // Another leaf, size or root does not verify.
            let other = leaf_hash(b"not it");
            assert!(verify_inclusion(&other, index, size, &proof, &r).is_err());
            if size < 8 {
                let bigger = root(&mut t, size + 1).unwrap();
                assert!(verify_inclusion(&leaf, index, size + 1, &proof, &bigger).is_err());
            }
        }
    }

    /// Reference consistency proofs (1→1, 1→8, 6→8, 2→5).
    #[test]
    fn consistency_proofs_match_the_reference_vectors_and_verify() {
        let cases: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let mut t = tree(8);
        for (old, new, want) in cases {
            let proof = consistency_proof(&mut t, old, new).unwrap();
            let got: Vec<String> = proof.iter().map(hex::encode).collect();
            assert_eq!(got, want, "{old} → {new}");
            let (ro, rn) = (root(&mut t, old).unwrap(), root(&mut t, new).unwrap());
            verify_consistency(old, new, &ro, &rn, &proof).unwrap();
            if old < new {
                assert!(verify_consistency(old, new, &rn, &rn, &proof).is_err());
            }
        }
    }

    /// Every proof over trees up to 40 leaves verifies, and the frontier
    /// kept on append gives the same perfect subtrees as the whole tree.
    #[test]
    fn every_small_tree_proves_and_the_frontier_agrees() {
        let mut t = MemoryTree::new();
        let mut frontier = Vec::new();
        let mut stored = std::collections::HashMap::new();
        for i in 0..40u64 {
            let leaf = leaf_hash(&i.to_be_bytes());
            t.push(leaf);
            for (level, index, h) in append(&mut frontier, i, leaf) {
                stored.insert((level, index), h);
            }
            let want: Vec<(u32, u64)> = frontier.iter().map(|(l, i, _)| (*l, *i)).collect();
            assert_eq!(want, frontier_positions(i + 1));
        }
        let mut from_store = |level: u32, index: u64| stored.get(&(level, index)).copied();
        for size in 1..=40 {
            let r = root(&mut t, size).unwrap();
            assert_eq!(root(&mut from_store, size).unwrap(), r);
            for index in 0..size {
                let p = inclusion_proof(&mut from_store, index, size).unwrap();
                let leaf = leaf_hash(&index.to_be_bytes());
                verify_inclusion(&leaf, index, size, &p, &r).unwrap();
            }
            for old in 1..=size {
                let p = consistency_proof(&mut from_store, old, size).unwrap();
                let ro = root(&mut t, old).unwrap();
                verify_consistency(old, size, &ro, &r, &p).unwrap();
            }
        }
    }
}
