//! Cycles in a directed graph given as `node -> the nodes it points at`: the one algorithm
//! behind both the manifest's validation and the dependency graph.

use std::collections::BTreeMap;

/// The first cycle a depth-first walk in node order meets, as the path that closes it
/// (`a -> b -> a` is `["a", "b", "a"]`), or `None` when there is none. Edges to nodes that
/// are not keys of `edges` lead nowhere.
pub(crate) fn find_cycle(edges: &BTreeMap<&str, Vec<&str>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit<'a>(
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        node: &'a str,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        marks.insert(node, Mark::Active);
        stack.push(node);
        for &dep in edges.get(node).map(Vec::as_slice).unwrap_or(&[]) {
            match marks.get(dep).copied().unwrap_or(Mark::New) {
                Mark::Active => {
                    let from = stack.iter().position(|s| *s == dep).unwrap_or(0);
                    let mut path: Vec<String> =
                        stack[from..].iter().map(|s| s.to_string()).collect();
                    path.push(dep.to_string());
                    return Some(path);
                }
                Mark::New if edges.contains_key(dep) => {
                    if let Some(c) = visit(edges, dep, marks, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for &node in edges.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(edges, node, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_to_unknown_nodes_close_no_cycle() {
        let edges = BTreeMap::from([("a", vec!["b", "x"]), ("b", vec!["x"])]);
        assert_eq!(find_cycle(&edges), None);
        let edges = BTreeMap::from([("a", vec!["x", "b"]), ("b", vec!["a"])]);
        assert_eq!(
            find_cycle(&edges),
            Some(vec!["a".to_string(), "b".into(), "a".into()])
        );
    }
}
