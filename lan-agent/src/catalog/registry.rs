//! Catalog writes: register and deregister nodes, services and checks, with Consul's rules
//! (service ID defaults to its name, check ID to its name, a service check needs its
//! service, a check going critical invalidates the sessions bound to it).
//!
//! Besides the table indexes, each write moves a per-node index and a per-service-name
//! index, so a blocking query on service `web` wakes only for changes that `web`'s answer
//! could show: its instances, their checks, their nodes.

use cairn_shared::api::{
    CheckStatus, DeregisterRequest, HealthCheck, Node, NodeService, RegisterRequest,
};
use cairn_shared::rpc::RpcError;

use super::watch::Change;
use super::{NodeKey, Store, Table, Undo};

impl Store {
    pub(super) fn register(
        &mut self,
        idx: u64,
        now: u64,
        req: &RegisterRequest,
    ) -> Result<(), RpcError> {
        if req.node.is_empty() {
            return Err(RpcError::internal("Must provide node"));
        }
        if !req.id.is_empty() && uuid::Uuid::parse_str(&req.id).is_err() {
            return Err(RpcError::internal(format!(
                "Bad node ID: uuid string is wrong length or improperly formatted: {:?}",
                req.id
            )));
        }
        if req.address.is_empty() && !req.skip_node_update {
            return Err(RpcError::internal(
                "Must provide address if SkipNodeUpdate is not set",
            ));
        }
        // SkipNodeUpdate leaves an existing node alone but still creates a missing one.
        if !(req.skip_node_update && self.nodes.contains_key(&req.node)) {
            self.ensure_node(idx, req)?;
        }
        if let Some(svc) = &req.service
            && svc.service.is_empty()
            && !svc.id.is_empty()
        {
            return Err(RpcError::internal(
                "Must provide service name (Service.Service) when service ID is provided",
            ));
        }
        if let Some(svc) = &req.service {
            self.ensure_service(idx, &req.node, svc)?;
        }
        for check in req.check.iter().chain(&req.checks) {
            self.ensure_check(idx, now, &req.node, check)?;
        }
        Ok(())
    }

    fn ensure_node(&mut self, idx: u64, req: &RegisterRequest) -> Result<(), RpcError> {
        if !req.id.is_empty()
            && let Some(other) = self
                .nodes
                .values()
                .find(|n| n.id.eq_ignore_ascii_case(&req.id) && n.node != req.node)
        {
            return Err(RpcError::internal(format!(
                "failed inserting node: Error while renaming Node ID: \"{}\": Node name {} is reserved by node ID {}",
                req.id, other.node, other.id
            )));
        }
        let old = self.nodes.get(&req.node);
        let node = Node {
            id: if req.id.is_empty() {
                old.map(|n| n.id.clone()).unwrap_or_default()
            } else {
                req.id.clone()
            },
            node: req.node.clone(),
            address: req.address.clone(),
            datacenter: req.datacenter.clone(),
            tagged_addresses: req.tagged_addresses.clone(),
            meta: req.node_meta.clone(),
            create_index: old.map_or(idx, |n| n.create_index),
            modify_index: old.map_or(idx, |n| n.modify_index),
        };
        if old == Some(&node) {
            return Ok(());
        }
        let node = Node {
            modify_index: idx,
            ..node
        };
        self.put_node(node);
        self.bump(Table::Nodes, idx);
        self.touch_node(idx, &req.node);
        self.touch_node_services(idx, &req.node);
        Ok(())
    }

    fn ensure_service(&mut self, idx: u64, node: &str, svc: &NodeService) -> Result<(), RpcError> {
        if svc.service.is_empty() {
            return Err(RpcError::internal(
                "Must provide service name (Service.Service) when service ID is provided",
            ));
        }
        if matches!(svc.address.as_str(), "0.0.0.0" | "::" | "[::]") {
            return Err(RpcError::internal("Invalid service address"));
        }
        let mut svc = svc.clone();
        if svc.id.is_empty() {
            svc.id = svc.service.clone();
        }
        let key = (node.to_string(), svc.id.clone());
        let old = self.services.get(&key).cloned();
        svc.create_index = old.as_ref().map_or(idx, |s| s.create_index);
        svc.modify_index = old.as_ref().map_or(idx, |s| s.modify_index);
        if old.as_ref() == Some(&svc) {
            return Ok(());
        }
        svc.modify_index = idx;
        let name = svc.service.clone();
        self.put_service(key, svc);
        self.bump(Table::Services, idx);
        self.touch_node(idx, node);
        self.touch_service(idx, &name);
        if let Some(old) = old
            && old.service != name
        {
            self.touch_service(idx, &old.service);
        }
        Ok(())
    }

    fn ensure_check(
        &mut self,
        idx: u64,
        now: u64,
        node: &str,
        check: &HealthCheck,
    ) -> Result<(), RpcError> {
        let mut c = check.clone();
        if !c.node.is_empty() && !c.node.eq_ignore_ascii_case(node) {
            return Err(RpcError::internal(format!(
                "Node '{}' for check '{}' doesn't match register request node '{node}'",
                c.node, c.check_id
            )));
        }
        c.node = node.to_string();
        if c.check_id.is_empty() {
            c.check_id = c.name.clone();
        }
        if c.service_id.is_empty() {
            c.service_name.clear();
            c.service_tags.clear();
        } else {
            let Some(svc) = self.services.get(&(node.to_string(), c.service_id.clone())) else {
                return Err(RpcError::internal(format!(
                    "Unknown service ID '{}' for check ID '{}'",
                    c.service_id, c.check_id
                )));
            };
            c.service_name = svc.service.clone();
            c.service_tags = svc.tags.clone();
        }
        let key = (node.to_string(), c.check_id.clone());
        let old = self.checks.get(&key);
        c.create_index = old.map_or(idx, |o| o.create_index);
        c.modify_index = old.map_or(idx, |o| o.modify_index);
        if old == Some(&c) {
            return Ok(());
        }
        c.modify_index = idx;
        let critical = c.status == CheckStatus::Critical;
        let service = c.service_name.clone();
        let check_id = c.check_id.clone();
        self.put_check(key, c);
        self.bump(Table::Checks, idx);
        self.touch_node(idx, node);
        if service.is_empty() {
            self.touch_node_services(idx, node);
        } else {
            self.touch_service(idx, &service);
        }
        if critical {
            for id in self.sessions_bound_to(node, &check_id) {
                self.session_destroy(idx, now, &id);
            }
        }
        Ok(())
    }

    pub(super) fn deregister(
        &mut self,
        idx: u64,
        now: u64,
        req: &DeregisterRequest,
    ) -> Result<(), RpcError> {
        if req.node.is_empty() {
            return Err(RpcError::internal("Must provide node"));
        }
        let node = req.node.as_str();
        if !req.service_id.is_empty() {
            self.delete_service(idx, now, node, &req.service_id);
        } else if !req.check_id.is_empty() {
            self.delete_check(idx, now, node, &req.check_id);
        } else {
            self.delete_node(idx, now, node);
        }
        Ok(())
    }

    fn delete_check(&mut self, idx: u64, now: u64, node: &str, check_id: &str) {
        let key = (node.to_string(), check_id.to_string());
        let Some(old) = self.remove_check(&key) else {
            return;
        };
        self.bump(Table::Checks, idx);
        self.touch_node(idx, node);
        if old.service_name.is_empty() {
            self.touch_node_services(idx, node);
        } else {
            self.touch_service(idx, &old.service_name);
        }
        for id in self.sessions_bound_to(node, check_id) {
            self.session_destroy(idx, now, &id);
        }
    }

    fn delete_service(&mut self, idx: u64, now: u64, node: &str, service_id: &str) {
        let key = (node.to_string(), service_id.to_string());
        let owned: Vec<String> = self
            .checks_on(node)
            .filter(|c| c.service_id == service_id)
            .map(|c| c.check_id.clone())
            .collect();
        for check in owned {
            self.delete_check(idx, now, node, &check);
        }
        if let Some(old) = self.remove_service(&key) {
            self.bump(Table::Services, idx);
            self.touch_node(idx, node);
            self.touch_service(idx, &old.service);
        }
    }

    fn delete_node(&mut self, idx: u64, now: u64, node: &str) {
        if !self.nodes.contains_key(node) {
            return;
        }
        let services: Vec<String> = self.services_on(node).map(|s| s.id.clone()).collect();
        for id in services {
            self.delete_service(idx, now, node, &id);
        }
        let checks: Vec<String> = self.checks_on(node).map(|c| c.check_id.clone()).collect();
        for id in checks {
            self.delete_check(idx, now, node, &id);
        }
        for id in self.sessions_on(node) {
            self.session_destroy(idx, now, &id);
        }
        self.remove_coordinate(idx, node);
        self.remove_node(node);
        self.bump(Table::Nodes, idx);
        self.touch_node(idx, node);
    }

    // ---- lookups ----

    pub(super) fn services_on<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a NodeService> + 'a {
        self.services
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, s)| s)
    }

    pub(super) fn checks_on<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a HealthCheck> + 'a {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, c)| c)
    }

    /// Instances of a service name (matched ignoring case, as Consul), in (node, service
    /// ID) order.
    pub(super) fn instances<'a>(
        &'a self,
        name: &str,
    ) -> impl Iterator<Item = (&'a Node, &'a NodeService)> + 'a {
        self.by_service_name
            .get(&name.to_lowercase())
            .into_iter()
            .flatten()
            .filter_map(|key| {
                let svc = self.services.get(key)?;
                let node = self.nodes.get(&key.0)?;
                Some((node, svc))
            })
    }

    // ---- primitives ----

    fn put_node(&mut self, n: Node) {
        let name = n.node.clone();
        let old = self.nodes.insert(name.clone(), n);
        self.record(|| Undo::Node(name, old));
    }

    fn remove_node(&mut self, name: &str) -> Option<Node> {
        let old = self.nodes.remove(name)?;
        self.record(|| Undo::Node(name.to_string(), Some(old.clone())));
        Some(old)
    }

    fn put_service(&mut self, key: NodeKey, svc: NodeService) {
        let name = svc.service.to_lowercase();
        let old = self.services.insert(key.clone(), svc);
        if let Some(o) = &old {
            let old_name = o.service.clone();
            self.unindex_service(&old_name, &key);
        }
        self.by_service_name
            .entry(name)
            .or_default()
            .insert(key.clone());
        self.record(|| Undo::Service(key, old));
    }

    fn remove_service(&mut self, key: &NodeKey) -> Option<NodeService> {
        let old = self.services.remove(key)?;
        self.unindex_service(&old.service, key);
        self.record(|| Undo::Service(key.clone(), Some(old.clone())));
        Some(old)
    }

    pub(super) fn unindex_service(&mut self, name: &str, key: &NodeKey) {
        let name = name.to_lowercase();
        if let Some(set) = self.by_service_name.get_mut(&name) {
            set.remove(key);
            if set.is_empty() {
                self.by_service_name.remove(&name);
            }
        }
    }

    fn put_check(&mut self, key: NodeKey, c: HealthCheck) {
        let old = self.checks.insert(key.clone(), c);
        self.record(|| Undo::Check(key, old));
    }

    fn remove_check(&mut self, key: &NodeKey) -> Option<HealthCheck> {
        let old = self.checks.remove(key)?;
        self.record(|| Undo::Check(key.clone(), Some(old.clone())));
        Some(old)
    }

    /// Moves the node's own index: anything about the node changed.
    fn touch_node(&mut self, idx: u64, node: &str) {
        let old = self.node_index.insert(node.to_string(), idx);
        self.record(|| Undo::NodeIndex(node.to_string(), old));
        self.changes.push(Change::Node(node.to_string()));
    }

    /// Moves a service name's index: a health read of that service could change.
    fn touch_service(&mut self, idx: u64, name: &str) {
        let name = name.to_lowercase();
        let old = self.service_index.insert(name.clone(), idx);
        self.record(|| Undo::ServiceIndex(name.clone(), old));
        self.changes.push(Change::Service(name));
    }

    /// A node-level change shows in the health of every service on the node.
    fn touch_node_services(&mut self, idx: u64, node: &str) {
        let mut names: Vec<String> = self.services_on(node).map(|s| s.service.clone()).collect();
        names.sort();
        names.dedup();
        for name in names {
            self.touch_service(idx, &name);
        }
    }
}
