//! Buffers pinned by a registration that lasts until it is undone: VFIO
//! DMA maps (`vfio`) and RDMA memory regions (`rdma`). Both families have
//! the same two variants, written once here: register then undo it in
//! `run`, or register and hold it past `run` (a long-held leak signal owned
//! by the checker) until `cleanup` undoes it.

use super::*;

/// What a family provides: a set-up that can register its prefaulted
/// buffer with the kernel and undo that.
pub(super) trait Registrar: Send + Sized {
    /// Sets everything up but the registration (device, context, the
    /// prefaulted buffer): `prepare`.
    fn open(scenario: &'static str) -> Result<Self, ScenarioError>;
    /// The buffer the registration pins.
    fn buffer(&self) -> &Mapping;
    /// The pinning call.
    fn register(&mut self, scenario: &'static str) -> Result<(), ScenarioError>;
    /// The unpinning call, when registered (nothing otherwise).
    fn unregister(&mut self, scenario: &'static str) -> Result<(), ScenarioError>;
}

/// One scenario of a registration family.
pub(super) struct Registered<R> {
    pub(super) spec: Spec,
    /// Whether the registration outlives `run` (undone by `cleanup`).
    pub(super) held: bool,
    pub(super) state: Option<R>,
}

impl<R> Registered<R> {
    pub(super) fn new(spec: Spec, held: bool) -> Self {
        Registered { spec, held, state: None }
    }
}

impl<R: Registrar> Scenario for Registered<R> {
    fn spec(&self) -> Spec {
        self.spec
    }

    fn expected_delta(&self) -> FollPinDelta {
        let pages = self.pages();
        FollPinDelta { acquired: pages, released: if self.held { 0 } else { pages } }
    }

    fn expected_leak(&self) -> Option<ExpectedLeak> {
        self.held.then(|| ExpectedLeak {
            kind: LeakKind::LongHeld.as_str(),
            pages: self.pages(),
            owner_tgid: std::process::id(),
        })
    }

    fn buffer_range(&self) -> Option<(usize, usize)> {
        self.state.as_ref().map(|s| (s.buffer().addr() as usize, s.buffer().len))
    }

    fn prepare(&mut self) -> Result<(), ScenarioError> {
        self.cleanup()?;
        self.state = Some(R::open(self.name())?);
        Ok(())
    }

    fn run(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        let held = self.held;
        let st = prepared(&mut self.state, name)?;
        st.register(name)?;
        if !held {
            st.unregister(name)?;
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), ScenarioError> {
        let name = self.name();
        match self.state.take() {
            Some(mut st) => st.unregister(name),
            None => Ok(()),
        }
    }
}
