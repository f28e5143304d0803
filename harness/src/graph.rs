//! The dependency graph of a manifest: order, layers, dependents, Graphviz output.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use crate::manifest::{Condition, Manifest};

/// A dependency cycle, as the path that closes it: `orders -> payments -> orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// Service names along the cycle; the first is repeated at the end.
    pub path: Vec<String>,
}

/// Services and their dependency edges; acyclic by construction.
#[derive(Debug, Clone)]
pub struct Graph {
    deps: BTreeMap<String, Vec<(String, Condition)>>,
}

impl Graph {
    /// Builds the graph, rejecting cycles.
    pub fn new(manifest: &Manifest) -> Result<Graph, Cycle> {
        let deps = manifest
            .services
            .iter()
            .map(|s| {
                let d = s
                    .depends_on
                    .iter()
                    .map(|d| (d.service.clone(), d.condition))
                    .collect();
                (s.name.clone(), d)
            })
            .collect();
        Graph::from_edges(deps)
    }

    /// Builds a graph from `service -> [(dependency, condition)]`.
    pub fn from_edges(deps: BTreeMap<String, Vec<(String, Condition)>>) -> Result<Graph, Cycle> {
        let edges: BTreeMap<&str, Vec<&str>> = deps
            .iter()
            .map(|(n, d)| (n.as_str(), d.iter().map(|(d, _)| d.as_str()).collect()))
            .collect();
        match crate::model::dag::find_cycle(&edges) {
            Some(path) => Err(Cycle { path }),
            None => Ok(Graph { deps }),
        }
    }

    /// All service names, sorted.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.deps.keys().map(String::as_str)
    }

    /// Direct dependencies of a service with their conditions.
    pub fn dependencies(&self, service: &str) -> &[(String, Condition)] {
        self.deps.get(service).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Services that name `service` directly in their `depends-on`.
    pub fn direct_dependents(&self, service: &str) -> Vec<&str> {
        self.deps
            .iter()
            .filter(|(_, d)| d.iter().any(|(n, _)| n == service))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Every service that depends on `service`, directly or not, sorted.
    pub fn dependents(&self, service: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut queue = VecDeque::from([service.to_string()]);
        while let Some(s) = queue.pop_front() {
            for d in self.direct_dependents(&s) {
                if out.insert(d.to_string()) {
                    queue.push_back(d.to_string());
                }
            }
        }
        out
    }

    /// Every service `service` needs, directly or not, sorted.
    pub fn requirements(&self, service: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut queue = VecDeque::from([service.to_string()]);
        while let Some(s) = queue.pop_front() {
            for (d, _) in self.dependencies(&s) {
                if out.insert(d.clone()) {
                    queue.push_back(d.clone());
                }
            }
        }
        out
    }

    /// Dependency layers: layer 0 needs nothing, layer n needs only earlier layers.
    pub fn layers(&self) -> Vec<Vec<String>> {
        let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
        for name in self.order() {
            let d = self
                .dependencies(&name)
                .iter()
                .map(|(dep, _)| depth[dep.as_str()] + 1)
                .max()
                .unwrap_or(0);
            let key = self
                .deps
                .get_key_value(name.as_str())
                .map(|(k, _)| k.as_str())
                .unwrap_or("");
            depth.insert(key, d);
        }
        let mut layers: Vec<Vec<String>> = Vec::new();
        for (name, d) in depth {
            if layers.len() <= d {
                layers.resize(d + 1, Vec::new());
            }
            layers[d].push(name.to_string());
        }
        layers
    }

    /// A topological order: every service after its dependencies; ties broken by name.
    pub fn order(&self) -> Vec<String> {
        let mut remaining: BTreeMap<&str, usize> = self
            .deps
            .iter()
            .map(|(n, d)| (n.as_str(), d.len()))
            .collect();
        let mut ready: BTreeSet<&str> = remaining
            .iter()
            .filter(|(_, c)| **c == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut order = Vec::new();
        while let Some(next) = ready.pop_first() {
            remaining.remove(next);
            order.push(next.to_string());
            for dependent in self.direct_dependents(next) {
                if let Some(count) = remaining.get_mut(dependent) {
                    *count -= 1;
                    if *count == 0 {
                        ready.insert(dependent);
                    }
                }
            }
        }
        order
    }

    /// The longest chain of dependencies by the given per-service cost, and its total.
    pub fn critical_path(&self, cost: impl Fn(&str) -> f64) -> (Vec<String>, f64) {
        let mut best: BTreeMap<String, (f64, Option<String>)> = BTreeMap::new();
        for name in self.order() {
            let (before, via) = self
                .dependencies(&name)
                .iter()
                .map(|(d, _)| (best[d].0, Some(d.clone())))
                .fold((0.0, None), |a, b| if b.0 > a.0 { b } else { a });
            best.insert(name.clone(), (before + cost(&name), via));
        }
        let Some((end, (total, _))) = best
            .iter()
            .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
            .map(|(n, v)| (n.clone(), v.clone()))
        else {
            return (Vec::new(), 0.0);
        };
        let mut path = vec![end.clone()];
        let mut cur = end;
        while let Some(prev) = best[&cur].1.clone() {
            path.push(prev.clone());
            cur = prev;
        }
        path.reverse();
        (path, total)
    }

    /// Graphviz DOT text; `started` edges are dashed.
    pub fn to_dot(&self, name: &str) -> String {
        let mut out =
            format!("digraph \"{name}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
        for service in self.deps.keys() {
            let _ = writeln!(out, "  \"{service}\";");
        }
        for (service, deps) in &self.deps {
            for (dep, condition) in deps {
                let style = match condition {
                    Condition::Ready => "",
                    Condition::Started => " [style=dashed, label=\"started\"]",
                    Condition::Completed => " [style=dotted, label=\"completed\"]",
                };
                let _ = writeln!(out, "  \"{dep}\" -> \"{service}\"{style};");
            }
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> Result<Graph, Cycle> {
        Graph::from_edges(
            edges
                .iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        d.iter()
                            .map(|d| (d.to_string(), Condition::Ready))
                            .collect(),
                    )
                })
                .collect(),
        )
    }

    fn shop() -> Graph {
        graph(&[
            ("postgres", &[]),
            ("redis", &[]),
            ("rabbitmq", &[]),
            ("payments", &["postgres", "redis"]),
            ("orders", &["postgres", "redis", "rabbitmq", "payments"]),
            ("notifications", &["postgres", "rabbitmq"]),
        ])
        .unwrap()
    }

    #[test]
    fn order_puts_dependencies_first() {
        let order = shop().order();
        assert_eq!(order.len(), 6);
        let pos = |n: &str| order.iter().position(|s| s == n).unwrap();
        assert!(pos("postgres") < pos("payments"));
        assert!(pos("payments") < pos("orders"));
        assert!(pos("rabbitmq") < pos("notifications"));
    }

    #[test]
    fn layers_group_by_depth() {
        assert_eq!(
            shop().layers(),
            vec![
                vec!["postgres".to_string(), "rabbitmq".into(), "redis".into()],
                vec!["notifications".into(), "payments".into()],
                vec!["orders".into()],
            ]
        );
    }

    #[test]
    fn dependents_are_transitive() {
        let g = shop();
        assert_eq!(
            g.dependents("payments"),
            BTreeSet::from(["orders".to_string()])
        );
        assert_eq!(
            g.dependents("postgres"),
            BTreeSet::from([
                "notifications".to_string(),
                "orders".into(),
                "payments".into()
            ])
        );
        assert!(g.dependents("orders").is_empty());
        assert_eq!(g.requirements("orders").len(), 4);
    }

    #[test]
    fn cycles_are_reported_as_a_path() {
        let err = graph(&[("orders", &["payments"]), ("payments", &["orders"])]).unwrap_err();
        assert_eq!(err.path, ["orders", "payments", "orders"]);
        let err = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]).unwrap_err();
        assert_eq!(err.path, ["a", "b", "c", "a"]);
    }

    #[test]
    fn critical_path_follows_the_longest_chain() {
        let cost = |n: &str| match n {
            "rabbitmq" => 5.0,
            "postgres" => 0.6,
            "payments" => 0.1,
            _ => 0.1,
        };
        let (path, total) = shop().critical_path(cost);
        assert_eq!(path, ["rabbitmq", "orders"]);
        assert!((total - 5.1).abs() < 1e-9);
    }

    #[test]
    fn dot_lists_every_edge() {
        let dot = shop().to_dot("shop");
        assert!(dot.contains("\"payments\" -> \"orders\";"));
        assert_eq!(dot.matches("->").count(), 8);
    }
}
