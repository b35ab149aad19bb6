//! Fused kernels for the most frequent formulas (placeholder: none matches yet).

use super::{Block, BlockRunner, Isa, Job};
use crate::plan::{Element, Problem};
use std::marker::PhantomData;

/// A fused kernel matched to a problem.
pub struct FusedRunner<'p, 'a, T> {
    _p: PhantomData<&'p Problem<'a, T>>,
}

impl<'p, 'a, T: Element> FusedRunner<'p, 'a, T> {
    /// The fused kernel for this problem, if one matches.
    pub fn new(_problem: &'p Problem<'a, T>) -> Option<Self> {
        None
    }
}

impl<T: Element> BlockRunner for FusedRunner<'_, '_, T> {
    fn run(&self, _isa: Isa, _job: &Job, _block: &mut Block) {}
}
