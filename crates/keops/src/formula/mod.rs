//! The formula IR: a hash-consed DAG of operations over variables and constants.
//!
//! A [`Formula`] is a cheap handle (an `Arc`) to an interned [`Node`]: building the same
//! expression twice yields the same node, so equality is pointer equality and common
//! subexpressions are shared for free. Every node knows its output dimension, checked
//! when it is built ([`Formula::new`]).
//!
//! - [`ops`]: the op table (names, arities, dimension rules, semantics);
//! - [`parse`]: KeOps' formula-string syntax;
//! - [`eval`]: the f64 reference evaluator, the oracle of every test;
//! - [`diff`]: symbolic differentiation (`Grad`, `Diff`, `Laplacian`, ...).

pub mod complex;
pub mod diff;
pub mod eval;
pub mod ops;
pub mod parse;
pub mod pattern;
mod print;
mod recurrence;
pub mod tensordot;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

pub use ops::{Binary, Cat, Op, Ternary, Unary};

use crate::error::Result;

/// One interned node of a formula DAG.
#[derive(Debug)]
pub struct Node {
    id: u64,
    /// The operation.
    pub op: Op,
    /// Operands, in order.
    pub args: Vec<Formula>,
    /// Output dimension.
    pub dim: usize,
}

impl Drop for Node {
    /// Drops operands iteratively: a formula built in code may be a chain far deeper
    /// than the stack (the default recursive drop would overflow it).
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.args);
        while let Some(f) = stack.pop() {
            if let Ok(mut node) = Arc::try_unwrap(f.0) {
                stack.append(&mut node.args);
            }
        }
    }
}

/// A handle to an interned formula node. Clones are cheap; equal formulas are the same node.
#[derive(Clone)]
pub struct Formula(Arc<Node>);

impl PartialEq for Formula {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Formula {}
impl Hash for Formula {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state)
    }
}
impl std::ops::Deref for Formula {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.0
    }
}

type Key = (Op, Vec<u64>);

struct Interner {
    map: HashMap<Key, Weak<Node>>,
    /// Size at which dead entries are next purged.
    purge_at: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        map: HashMap::new(),
        purge_at: 1024,
    })
});
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Formula {
    /// Builds (or finds) the node `op(args)`, checking arity and dimensions.
    ///
    /// Prefer the named constructors ([`Formula::vi`], [`Formula::exp`], ...) or the
    /// parser; this is the single entry point they all go through. No simplification is
    /// done here (see the constructors in [`ops`]).
    pub fn new(op: Op, args: Vec<Formula>) -> Result<Formula> {
        let dims: Vec<usize> = args.iter().map(|a| a.dim).collect();
        let dim = op.out_dim(&dims)?;
        Ok(Self::intern(op, args, dim))
    }

    fn intern(op: Op, args: Vec<Formula>, dim: usize) -> Formula {
        let key: Key = (op.clone(), args.iter().map(|a| a.0.id).collect());
        // A poisoned lock only means another thread panicked while holding it; the map
        // itself is always left consistent, so keep using it.
        let mut int = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = int.map.get(&key).and_then(Weak::upgrade) {
            return Formula(node);
        }
        let node = Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            op,
            args,
            dim,
        });
        int.map.insert(key, Arc::downgrade(&node));
        if int.map.len() >= int.purge_at {
            int.map.retain(|_, w| w.strong_count() > 0);
            int.purge_at = (2 * int.map.len()).max(1024);
        }
        Formula(node)
    }

    /// A unique identifier of this node (stable while the node lives).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// All nodes of the DAG, each once, operands before the nodes that use them.
    pub fn topo_order(&self) -> Vec<Formula> {
        topo_order(std::slice::from_ref(self))
    }

    /// The variables of the formula, sorted by (index, category), each once.
    pub fn variables(&self) -> Vec<Formula> {
        variables(std::slice::from_ref(self))
    }

    /// Number of distinct nodes in the DAG.
    pub fn node_count(&self) -> usize {
        self.topo_order().len()
    }

    /// The variable description `(cat, index)` if this node is a variable.
    pub fn as_var(&self) -> Option<(Cat, usize)> {
        match self.op {
            Op::Var { cat, index, .. } => Some((cat, index)),
            _ => None,
        }
    }

    /// The constant value of this node if it is a scalar constant.
    pub fn as_const(&self) -> Option<f64> {
        self.op.const_value()
    }
}

/// All nodes reachable from `roots`, each once, operands first.
pub fn topo_order(roots: &[Formula]) -> Vec<Formula> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    // Iterative post-order so that deep formulas cannot overflow the stack.
    let mut stack: Vec<(Formula, bool)> = roots.iter().rev().map(|r| (r.clone(), false)).collect();
    while let Some((f, expanded)) = stack.pop() {
        if expanded {
            if seen.insert(f.id()) {
                out.push(f);
            }
            continue;
        }
        if seen.contains(&f.id()) {
            continue;
        }
        stack.push((f.clone(), true));
        for a in f.args.iter().rev() {
            if !seen.contains(&a.id()) {
                stack.push((a.clone(), false));
            }
        }
    }
    out
}

/// The variables reachable from `roots`, sorted by (index, category).
pub fn variables(roots: &[Formula]) -> Vec<Formula> {
    let mut v: Vec<Formula> = topo_order(roots)
        .into_iter()
        .filter(|f| f.as_var().is_some())
        .collect();
    v.sort_by_key(|f| {
        let (c, i) = f.as_var().unwrap_or((Cat::Pm, usize::MAX));
        (i, c as u8, f.dim)
    });
    v
}

impl std::fmt::Debug for Formula {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}
