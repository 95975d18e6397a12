//! A router that remembers the paths it registers, so a test can walk every route the
//! API serves (the ACL route walk) instead of a hand-kept list that could miss one.

use axum::Router;
use axum::routing::MethodRouter;

use super::HttpState;

/// Routes and their paths, merged like axum's [`Router`].
#[derive(Default)]
pub(crate) struct Routes {
    router: Router<HttpState>,
    paths: Vec<String>,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn route(mut self, path: &str, handler: MethodRouter<HttpState>) -> Self {
        self.paths.push(path.to_string());
        self.router = self.router.route(path, handler);
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Self {
        self.paths.extend(other.paths);
        self.router = self.router.merge(other.router);
        self
    }

    pub(crate) fn into_parts(self) -> (Router<HttpState>, Vec<String>) {
        (self.router, self.paths)
    }
}
