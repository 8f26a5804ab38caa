//! Which object serves each block of a segment that has layers.
//!
//! A segment offloaded once is one *base* object holding its blocks
//! `[0, blocks)` in order. A re-offload that finds only some blocks
//! changed uploads those as a *layer* over it (`format`: a layer object's
//! raw bytes are its blocks, its footer lists them as runs); the map lists
//! a segment's layers oldest first (`state::map`). A block is served by
//! the newest layer that holds it, else by the base. [`resolve`] cuts a
//! block range into pieces, each read from one object at one place, so a
//! read stays one lookup in the layers' runs (in memory once their
//! footers are read) plus one ranged GET per piece's frame.
//!
//! Why this is complete: every block past the range the segment's objects
//! held before a re-offload is in its layer (appended blocks are uploaded
//! whatever they hold), and every block of that range whose local page
//! differs from what the objects hold is too (a written page is local
//! until a re-offload's layer holds it), so the newest layer holding a
//! block holds its latest version.
use crate::format::LayerIndex;

/// Blocks `[at, at + count)` of an object's raw bytes (in blocks), that is
/// of the base (`layer` None, where position and segment block agree) or
/// of layer `layer` (an index into the layers given to [`resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub layer: Option<usize>,
    pub at: u32,
    pub count: u32,
}

/// Cuts segment blocks `[first, first + n)` into pieces by the object that
/// serves them; `layers` oldest first. Adjacent blocks of one object in a
/// row form one piece.
pub fn resolve(layers: &[&LayerIndex], first: u32, n: u32) -> Vec<Piece> {
    let end = first + n;
    let mut out: Vec<Piece> = Vec::new();
    let mut b = first;
    while b < end {
        // The newest layer holding b, and where the next newer one starts.
        let mut next_newer = end;
        let mut found = None;
        for (i, l) in layers.iter().enumerate().rev() {
            if let Some((at, left)) = l.find(b) {
                found = Some((i, at, left));
                break;
            }
            if let Some(s) = l.next_at_or_after(b) {
                next_newer = next_newer.min(s);
            }
        }
        let piece = match found {
            Some((i, at, left)) => Piece {
                layer: Some(i),
                at,
                count: left.min(next_newer - b),
            },
            None => Piece {
                layer: None,
                at: b,
                count: next_newer - b,
            },
        };
        match out.last_mut() {
            Some(p) if p.layer == piece.layer && p.at + p.count == piece.at => {
                p.count += piece.count
            }
            _ => out.push(piece),
        }
        b += piece.count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CipherImpl;
    use crate::format::{encode_object, BlockRun, FormatOptions, Layer, ObjectLayout, TailParse};
    use crate::keys::KeyRing;
    use proptest::prelude::*;

    fn index(runs: &[(u32, u32)]) -> LayerIndex {
        let runs: Vec<BlockRun> = runs
            .iter()
            .map(|&(start, len)| BlockRun { start, len })
            .collect();
        let blocks: u32 = runs.iter().map(|r| r.len).sum();
        let raw = vec![1u8; blocks as usize * 8192];
        let layer = Layer {
            base: [1; 16],
            seq: 1,
            blocks: runs.last().map_or(0, |r| r.end()),
            runs,
        };
        let keys = KeyRing::none();
        let opts = FormatOptions::default();
        let (obj, _) = encode_object("l", &raw, &opts, &keys, Some(layer)).unwrap();
        match ObjectLayout::parse_tail("l", obj.len() as u64, &obj, &keys, CipherImpl::AwsLc)
            .unwrap()
        {
            TailParse::Complete(l) => l.layer.unwrap(),
            TailParse::NeedFrom { .. } => unreachable!(),
        }
    }

    /// Block by block: the newest layer holding it, and where.
    fn naive(layers: &[&LayerIndex], first: u32, n: u32) -> Vec<(Option<usize>, u32)> {
        (first..first + n)
            .map(|b| {
                layers
                    .iter()
                    .enumerate()
                    .rev()
                    .find_map(|(i, l)| l.find(b).map(|(at, _)| (Some(i), at)))
                    .unwrap_or((None, b))
            })
            .collect()
    }

    fn expand(pieces: &[Piece]) -> Vec<(Option<usize>, u32)> {
        pieces
            .iter()
            .flat_map(|p| (p.at..p.at + p.count).map(move |a| (p.layer, a)))
            .collect()
    }

    #[test]
    fn newest_layer_wins_and_runs_stay_whole() {
        let old = index(&[(2, 4)]); // blocks 2..6 at 0..4
        let new = index(&[(3, 1), (10, 2)]); // 3 at 0, 10..12 at 1..3
        let p = resolve(&[&old, &new], 0, 12);
        assert_eq!(
            p,
            vec![
                Piece {
                    layer: None,
                    at: 0,
                    count: 2
                },
                Piece {
                    layer: Some(0),
                    at: 0,
                    count: 1
                },
                Piece {
                    layer: Some(1),
                    at: 0,
                    count: 1
                },
                Piece {
                    layer: Some(0),
                    at: 2,
                    count: 2
                },
                Piece {
                    layer: None,
                    at: 6,
                    count: 4
                },
                Piece {
                    layer: Some(1),
                    at: 1,
                    count: 2
                },
            ]
        );
        assert_eq!(
            resolve(&[], 5, 3),
            vec![Piece {
                layer: None,
                at: 5,
                count: 3
            }]
        );
    }

    fn runs_strategy() -> impl Strategy<Value = Vec<(u32, u32)>> {
        prop::collection::vec((0u32..6, 1u32..5), 0..8).prop_map(|gaps| {
            let mut at = 0;
            gaps.into_iter()
                .map(|(gap, len)| {
                    let r = (at + gap, len);
                    at += gap + len;
                    r
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn pieces_serve_each_block_from_its_newest_layer(
            layers in prop::collection::vec(runs_strategy(), 0..4),
            first in 0u32..20,
            n in 1u32..40,
        ) {
            let idx: Vec<LayerIndex> = layers.iter().filter(|r| !r.is_empty()).map(|r| index(r)).collect();
            let refs: Vec<&LayerIndex> = idx.iter().collect();
            let pieces = resolve(&refs, first, n);
            prop_assert_eq!(expand(&pieces), naive(&refs, first, n));
            prop_assert!(pieces.iter().all(|p| p.count > 0));
        }
    }
}
