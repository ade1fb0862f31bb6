//! A tree-ensemble predictor that gives XGBoost's own `predict` bits.
//!
//! Read from XGBoost's JSON model (what `Booster.save_raw("json")` and the registry's
//! `model.json` hold). The semantics reproduced, as XGBoost's CPU predictor computes them:
//! each row's feature values as float32 (`value as f32`, round to nearest); a missing value
//! (NaN) takes the node's default direction, any other goes left when `value < split`
//! (float32 compare); the margin starts at the intercept (`base_score` through the
//! objective's `ProbToMargin`: `-logf(1/p - 1)` for logistic, in float32) and adds each
//! tree's leaf in tree order, in float32; the probability is XGBoost's sigmoid in float32
//! (`1 / (expf(min(-margin, 88.7)) + 1 + 1e-16)`). `expf`/`logf` are the C library's, the
//! same functions XGBoost's library calls in this process. What it does not reproduce
//! (categorical splits, vector leaves, several classes or targets, `dart`, other
//! objectives) is refused at load with the reason, and the caller falls back; the Python
//! side also checks the bits against XGBoost at load.
//!
//! Rows are evaluated in blocks: for a block of rows, every tree in order, every row of the
//! block, so a tree's nodes stay in cache across the block; a row's sum is still in tree
//! order, so one row alone and the same row in a batch get the same bits.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::Value;

use crate::windows::{view, view_mut};

/// Rows per block: the margins of a block stay in registers/L1 while the trees go by.
const BLOCK: usize = 64;
/// Rows walked side by side through one tree.
const LANES: usize = 8;
/// Batches at least this long release the GIL (below it the hand-off costs more).
const RELEASE_ROWS: usize = 8;
/// XGBoost's `kRtEps`: the intercept probability is clamped to [eps, 1 - eps].
const RT_EPS: f32 = 1e-6;
/// XGBoost's sigmoid caps `-margin` here (`expf` stays finite) and adds this to the sum.
const SIGMOID_CAP: f32 = 88.7;
const SIGMOID_EPS: f32 = 1e-16;

/// One node: for a split, the feature (high bit: missing goes left), the threshold and the
/// children (absolute indices); a leaf holds its value and is its own two children, so a
/// walk of the tree's depth ends on the leaf whatever the path's length (no branch on it).
#[derive(Clone, Copy)]
struct Node {
    value: f32,
    feature: u32,
    left: u32,
    right: u32,
}

const DEFAULT_LEFT: u32 = 1 << 31;

#[derive(Clone, Copy, PartialEq)]
enum Transform {
    Sigmoid,
}

#[pyclass(module = "skewless_native", frozen)]
pub struct TreeEnsemble {
    nodes: Vec<Node>,
    /// per tree: its root and its depth (the longest root-to-leaf path)
    roots: Vec<(u32, u32)>,
    base: f32,
    n_features: usize,
    transform: Transform,
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur
            .get(k)
            .ok_or_else(|| format!("the model has no {}", path[..=i].join(".")))?;
    }
    Ok(cur)
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, String> {
    get(v, path)?
        .as_str()
        .ok_or_else(|| format!("{} is not a string", path.join(".")))
}

fn ints(t: &Value, key: &str) -> Result<Vec<i64>, String> {
    get(t, &[key])?
        .as_array()
        .ok_or_else(|| format!("tree {key} is not a list"))?
        .iter()
        .map(|x| {
            x.as_i64()
                .ok_or_else(|| format!("tree {key}: not an integer"))
        })
        .collect()
}

fn floats(t: &Value, key: &str) -> Result<Vec<f32>, String> {
    get(t, &[key])?
        .as_array()
        .ok_or_else(|| format!("tree {key} is not a list"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| format!("tree {key}: not a number"))
        })
        .collect()
}

/// `"[4.6E-1]"` or `"4.6E-1"` -> the one float32 it holds (parsed as float32 directly).
fn base_score(s: &str) -> Result<f32, String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    if inner.contains(',') {
        return Err(format!(
            "base_score {s} has several values (vector intercept)"
        ));
    }
    inner
        .trim()
        .parse::<f32>()
        .map_err(|_| format!("base_score {s} is not a number"))
}

fn parse(model: &[u8], n_features: usize) -> Result<TreeEnsemble, String> {
    let v: Value =
        serde_json::from_slice(model).map_err(|e| format!("not an XGBoost JSON model ({e})"))?;
    let learner = get(&v, &["learner"])?;
    let booster = text(learner, &["gradient_booster", "name"])?;
    if booster != "gbtree" {
        return Err(format!(
            "booster {booster} (only gbtree is evaluated natively)"
        ));
    }
    let objective = text(learner, &["objective", "name"])?;
    let transform = match objective {
        "binary:logistic" | "reg:logistic" => Transform::Sigmoid,
        other => {
            return Err(format!(
                "objective {other} (only binary:logistic and reg:logistic)"
            ))
        }
    };
    let param = get(learner, &["learner_model_param"])?;
    for (key, ok) in [("num_class", "0"), ("num_target", "1")] {
        if let Ok(got) = text(param, &[key]) {
            if got != ok && !(key == "num_class" && got == "1") {
                return Err(format!("{key} {got} (one output only)"));
            }
        }
    }
    let p = base_score(text(param, &["base_score"])?)?;
    let p = p.clamp(RT_EPS, 1.0 - RT_EPS);
    let base = -(1.0f32 / p - 1.0f32).ln();
    let model = get(learner, &["gradient_booster", "model"])?;
    let trees = get(model, &["trees"])?
        .as_array()
        .ok_or("model.trees is not a list")?;
    if let Some(info) = model.get("tree_info").and_then(Value::as_array) {
        if info.iter().any(|g| g.as_i64() != Some(0)) {
            return Err("trees of several output groups".into());
        }
    }
    let mut nodes = Vec::new();
    let mut roots = Vec::with_capacity(trees.len());
    for (k, t) in trees.iter().enumerate() {
        let leaf_size = text(t, &["tree_param", "size_leaf_vector"]).unwrap_or("1");
        if leaf_size != "1" && leaf_size != "0" {
            return Err(format!("tree {k} has vector leaves"));
        }
        let (left, right) = (ints(t, "left_children")?, ints(t, "right_children")?);
        let (feat, cond) = (ints(t, "split_indices")?, floats(t, "split_conditions")?);
        let default_left = ints(t, "default_left")?;
        let n = left.len();
        if [right.len(), feat.len(), cond.len(), default_left.len()] != [n; 4] || n == 0 {
            return Err(format!("tree {k}: node arrays differ in length"));
        }
        if let Ok(types) = ints(t, "split_type") {
            if types.iter().any(|&s| s != 0) {
                return Err(format!("tree {k} has categorical splits"));
            }
        }
        let off = nodes.len() as i64;
        if off + n as i64 >= u32::MAX as i64 {
            return Err("too many nodes".into());
        }
        let mut depth = vec![0u32; n];
        for i in 0..n {
            let (l, r, f) = (left[i], right[i], feat[i]);
            if l == -1 {
                let me = (off + i as i64) as u32;
                nodes.push(Node {
                    value: cond[i],
                    feature: 0,
                    left: me,
                    right: me,
                });
                continue;
            }
            // children after their parent: every walk ends
            let inside = |c: i64| c > i as i64 && c < n as i64;
            if !inside(l) || !inside(r) || f < 0 || f as usize >= n_features {
                return Err(format!("tree {k} node {i}: child or feature out of range"));
            }
            let dl = if default_left[i] != 0 {
                DEFAULT_LEFT
            } else {
                0
            };
            nodes.push(Node {
                value: cond[i],
                feature: f as u32 | dl,
                left: (off + l) as u32,
                right: (off + r) as u32,
            });
            // parents come first, so depth[i] is final here (the longest path to i)
            for c in [l as usize, r as usize] {
                depth[c] = depth[c].max(depth[i] + 1);
            }
        }
        roots.push((off as u32, depth.iter().copied().max().unwrap_or(0)));
    }
    Ok(TreeEnsemble {
        nodes,
        roots,
        base,
        n_features,
        transform,
    })
}

impl TreeEnsemble {
    /// The leaf value `row` reaches in the tree at `root`: `depth` steps, each going left
    /// when `x < split` or when `x` is missing and the node's default is left.
    #[inline(always)]
    fn leaf(&self, (root, depth): (u32, u32), row: &[f32]) -> f32 {
        let nodes = &self.nodes[..];
        let mut i = root as usize;
        for _ in 0..depth {
            let n = nodes[i];
            let x = row[(n.feature & !DEFAULT_LEFT) as usize];
            let go_left = (x < n.value) | (x.is_nan() & (n.feature & DEFAULT_LEFT != 0));
            i = if go_left { n.left } else { n.right } as usize;
        }
        nodes[i].value
    }

    /// One row's margin over all trees: `LANES` trees walked side by side (one row has no
    /// other independent work), their leaves added in tree order.
    #[inline(always)]
    fn margin(&self, row: &[f32]) -> f32 {
        let nodes = &self.nodes[..];
        let mut acc = self.base;
        let mut groups = self.roots.chunks_exact(LANES);
        for group in &mut groups {
            let mut at: [usize; LANES] = std::array::from_fn(|k| group[k].0 as usize);
            let depth = group.iter().map(|t| t.1).max().unwrap_or(0);
            for _ in 0..depth {
                for i in at.iter_mut() {
                    let n = nodes[*i];
                    let x = row[(n.feature & !DEFAULT_LEFT) as usize];
                    let go_left = (x < n.value) | (x.is_nan() & (n.feature & DEFAULT_LEFT != 0));
                    *i = if go_left { n.left } else { n.right } as usize;
                }
            }
            for i in at {
                acc += nodes[i].value;
            }
        }
        for &tree in groups.remainder() {
            acc += self.leaf(tree, row);
        }
        acc
    }

    /// `leaf` for `LANES` rows at once, in lockstep: independent walks side by side keep
    /// the core busy while each waits for its next node (the same steps per row).
    #[inline(always)]
    fn leaves(&self, (root, depth): (u32, u32), rows: &[f32], nf: usize) -> [f32; LANES] {
        let nodes = &self.nodes[..];
        let mut at = [root as usize; LANES];
        for _ in 0..depth {
            for (k, i) in at.iter_mut().enumerate() {
                let n = nodes[*i];
                let x = rows[k * nf + (n.feature & !DEFAULT_LEFT) as usize];
                let go_left = (x < n.value) | (x.is_nan() & (n.feature & DEFAULT_LEFT != 0));
                *i = if go_left { n.left } else { n.right } as usize;
            }
        }
        at.map(|i| nodes[i].value)
    }

    #[inline]
    fn finish(&self, margin: f32) -> f32 {
        match self.transform {
            // XGBoost's `common::Sigmoid`: `-x` capped at 88.7 as `std::min` does (a NaN
            // stays NaN), then `1 / (expf(-x) + 1 + 1e-16)`, all in float32
            Transform::Sigmoid => {
                let neg = -margin;
                let capped = if SIGMOID_CAP < neg { SIGMOID_CAP } else { neg };
                1.0f32 / (capped.exp() + 1.0f32 + SIGMOID_EPS)
            }
        }
    }

    /// Rows of `x` (row-major, `n_features` wide) -> probabilities, via `put(i, p)`.
    fn run<T: Copy>(&self, x: &[T], cast: impl Fn(T) -> f32, mut put: impl FnMut(usize, f32)) {
        let nf = self.n_features;
        let rows = x.len() / nf;
        let mut buf = vec![0f32; BLOCK.min(rows.max(1)) * nf];
        let mut margin = [0f32; BLOCK];
        let mut start = 0;
        while start < rows {
            let m = BLOCK.min(rows - start);
            for (d, s) in buf.iter_mut().zip(&x[start * nf..(start + m) * nf]) {
                *d = cast(*s);
            }
            margin[..m].fill(self.base);
            let whole = m - m % LANES;
            for &tree in &self.roots {
                for r in (0..whole).step_by(LANES) {
                    let got = self.leaves(tree, &buf[r * nf..(r + LANES) * nf], nf);
                    for (acc, v) in margin[r..r + LANES].iter_mut().zip(got) {
                        *acc += v;
                    }
                }
            }
            for (r, acc) in margin[whole..m].iter_mut().enumerate() {
                let r = whole + r;
                *acc = self.margin(&buf[r * nf..(r + 1) * nf]);
            }
            for (r, &acc) in margin[..m].iter().enumerate() {
                put(start + r, self.finish(acc));
            }
            start += m;
        }
    }
}

fn check_shape(x_len: usize, out_len: usize, nf: usize) -> PyResult<()> {
    if nf == 0 || !x_len.is_multiple_of(nf) || x_len / nf != out_len {
        return Err(PyValueError::new_err(format!(
            "predict: X has {x_len} values, not {out_len} rows of {nf} features"
        )));
    }
    Ok(())
}

#[pymethods]
impl TreeEnsemble {
    /// From XGBoost's JSON model bytes, for rows of `n_features` values; a model it cannot
    /// evaluate exactly raises ValueError naming why.
    #[new]
    fn new(model: &[u8], n_features: usize) -> PyResult<Self> {
        parse(model, n_features).map_err(PyValueError::new_err)
    }

    #[getter]
    fn n_trees(&self) -> usize {
        self.roots.len()
    }

    #[getter]
    fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The margin every row starts from (the intercept in margin space).
    #[getter]
    fn base_margin(&self) -> f32 {
        self.base
    }

    /// P per row of `x` (float64, C-contiguous, rows x n_features) into `out` (float64,
    /// one per row): the float32 result, widened.
    fn predict_into(&self, py: Python<'_>, x: PyBuffer<f64>, out: PyBuffer<f64>) -> PyResult<()> {
        let (xs, os) = (view(&x, "X")?, view_mut(&out, "out")?);
        check_shape(xs.len(), os.len(), self.n_features)?;
        if os.len() >= RELEASE_ROWS {
            py.allow_threads(|| self.run(xs, |v| v as f32, |i, p| os[i] = p as f64));
        } else {
            self.run(xs, |v| v as f32, |i, p| os[i] = p as f64);
        }
        Ok(())
    }

    /// The same for float32 rows into float32 probabilities.
    fn predict_into_f32(
        &self,
        py: Python<'_>,
        x: PyBuffer<f32>,
        out: PyBuffer<f32>,
    ) -> PyResult<()> {
        let (xs, os) = (view(&x, "X")?, view_mut(&out, "out")?);
        check_shape(xs.len(), os.len(), self.n_features)?;
        if os.len() >= RELEASE_ROWS {
            py.allow_threads(|| self.run(xs, |v| v, |i, p| os[i] = p));
        } else {
            self.run(xs, |v| v, |i, p| os[i] = p);
        }
        Ok(())
    }
}
