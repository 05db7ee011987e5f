//! A rewriting view of an ONNX graph (onnx-ml.proto `GraphProto`): who produces and who consumes each value, the
//! constant initializers, and a batch of edits (nodes removed, nodes and initializers added) applied at once by
//! [`Rewriter::finish`], which re-sorts the nodes topologically (Kahn's algorithm, original order kept where free).

use std::collections::{BTreeSet, HashMap, HashSet};

use olive_onnx::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};
use olive_onnx::rewrite::Value;

/// The com.microsoft domain of ONNX Runtime's contrib ops.
pub const MS_DOMAIN: &str = "com.microsoft";

/// Edits to one graph.
pub struct Rewriter<'g> {
    graph: &'g mut GraphProto,
    producer: HashMap<String, usize>,
    consumers: HashMap<String, Vec<usize>>,
    initializer: HashMap<String, usize>,
    outputs: HashSet<String>,
    removed: HashSet<usize>,
    /// (position among the old nodes, node)
    added: Vec<(usize, NodeProto)>,
    new_initializers: Vec<TensorProto>,
    names: HashSet<String>,
}

impl<'g> Rewriter<'g> {
    /// Indexes `graph`.
    pub fn new(graph: &'g mut GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        let mut names = HashSet::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.clone(), i);
                names.insert(o.clone());
            }
            for input in n.input.iter().filter(|s| !s.is_empty()) {
                let list = consumers.entry(input.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
            names.extend(n.name.iter().cloned());
            // Inputs of subgraphs (If/Loop bodies) count as uses of outer values.
            for a in &n.attribute {
                for g in a.g.iter().chain(a.graphs.iter()) {
                    for name in subgraph_inputs(g) {
                        consumers.entry(name).or_default().push(i);
                    }
                }
            }
        }
        let initializer = graph
            .initializer
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.name.clone().map(|n| (n, i)))
            .collect::<HashMap<_, _>>();
        names.extend(initializer.keys().cloned());
        names.extend(graph.input.iter().filter_map(|i| i.name.clone()));
        let outputs = graph.output.iter().filter_map(|o| o.name.clone()).collect();
        Rewriter {
            graph,
            producer,
            consumers,
            initializer,
            outputs,
            removed: HashSet::new(),
            added: Vec::new(),
            new_initializers: Vec::new(),
            names,
        }
    }

    /// The graph's node `i`.
    pub fn node(&self, i: usize) -> &NodeProto {
        &self.graph.node[i]
    }

    /// The number of nodes before the edits (indices run below it).
    pub fn node_count(&self) -> usize {
        self.graph.node.len()
    }

    /// Whether node `i` is `op` of the default domain (or of `com.microsoft` for `ms:` prefixed names) and not
    /// already removed.
    pub fn is(&self, i: usize, op: &str) -> bool {
        // Indices past the old nodes stand for added ones (see `replace`): never matched again.
        let Some(n) = self.graph.node.get(i) else {
            return false;
        };
        let domain = n.domain.as_deref().unwrap_or("");
        let (want_domain, want_op) = match op.strip_prefix("ms:") {
            Some(op) => (MS_DOMAIN, op),
            None => ("", op),
        };
        !self.removed.contains(&i)
            && n.op_type.as_deref() == Some(want_op)
            && (domain == want_domain || (want_domain.is_empty() && domain == "ai.onnx"))
    }

    /// The live node producing `value`.
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.producer
            .get(value)
            .copied()
            .filter(|i| !self.removed.contains(i))
    }

    /// The producer of input `k` of node `i` when it is `op`.
    pub fn parent(&self, i: usize, k: usize, op: &str) -> Option<usize> {
        let input = self.graph.node[i].input.get(k)?;
        self.producer(input).filter(|&p| self.is(p, op))
    }

    /// The nodes consuming `value` (removed ones included until [`finish`](Self::finish); added ones as indices
    /// past the old nodes).
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The one consumer of node `i`'s first output when it is `op` and the output is not a graph output.
    pub fn only_child(&self, i: usize, op: &str) -> Option<usize> {
        let out = self.graph.node[i].output.first()?;
        match self.consumers(out) {
            [c] if !self.outputs.contains(out) && self.is(*c, op) => Some(*c),
            _ => None,
        }
    }

    /// Whether `value` is a graph output.
    pub fn is_output(&self, value: &str) -> bool {
        self.outputs.contains(value)
    }

    /// The value of the initializer `name` (a `Constant` node's is folded into an initializer by the peephole
    /// pass first).
    pub fn constant(&self, name: &str) -> Option<Value> {
        let t = self
            .initializer
            .get(name)
            .map(|&i| &self.graph.initializer[i])
            .or_else(|| {
                self.new_initializers
                    .iter()
                    .find(|t| t.name.as_deref() == Some(name))
            })?;
        Value::from_tensor(t)
    }

    /// Whether `name` is an initializer.
    pub fn is_initializer(&self, name: &str) -> bool {
        self.initializer.contains_key(name)
    }

    /// The scalar (single-element) constant `name`.
    pub fn scalar(&self, name: &str) -> Option<f64> {
        self.constant(name)?.scalar()
    }

    /// Of node `i`'s two inputs, (index of the one that is a single-element constant near `want`, the other input).
    pub fn scalar_input(&self, i: usize, want: f64, tolerance: f64) -> Option<(usize, String)> {
        let n = &self.graph.node[i];
        if n.input.len() != 2 {
            return None;
        }
        (0..2).find_map(|k| {
            let v = self.scalar(&n.input[k])?;
            ((v - want).abs() <= tolerance).then(|| (k, n.input[1 - k].clone()))
        })
    }

    /// Whether the nodes `set` can be replaced by one that produces `kept`: every other output of theirs is
    /// consumed only inside the set and is no graph output, and none is removed already.
    pub fn removable(&self, set: &[usize], kept: &[&str]) -> bool {
        let inside: HashSet<usize> = set.iter().copied().collect();
        if inside.len() != set.len() || set.iter().any(|i| self.removed.contains(i)) {
            return false;
        }
        set.iter().all(|&i| {
            self.graph.node[i]
                .output
                .iter()
                .filter(|o| !o.is_empty() && !kept.contains(&o.as_str()))
                .all(|o| {
                    !self.outputs.contains(o)
                        && self.consumers(o).iter().all(|c| inside.contains(c))
                })
        })
    }

    /// Removes `set` and puts `node` where the last of them was.
    pub fn replace(&mut self, set: &[usize], node: NodeProto) {
        let at = set.iter().copied().max().unwrap_or(self.graph.node.len());
        self.removed.extend(set.iter().copied());
        // The new node reads its inputs: later matches must not remove their producers.
        let stand_in = self.graph.node.len() + self.added.len();
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            self.consumers
                .entry(input.clone())
                .or_default()
                .push(stand_in);
        }
        self.added.push((at, node));
    }

    /// Removes node `i` (its outputs must be unused or renamed by the caller).
    pub fn remove(&mut self, i: usize) {
        self.removed.insert(i);
    }

    /// Whether node `i` is removed.
    pub fn is_removed(&self, i: usize) -> bool {
        self.removed.contains(&i)
    }

    /// A fresh name starting with `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 0;
        while self.names.contains(&name) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds an initializer named fresh from `base`; returns its name.
    pub fn add_initializer(&mut self, base: &str, value: &Value) -> String {
        let name = self.fresh(base);
        self.new_initializers.push(value.to_tensor(&name));
        name
    }

    /// Applies the edits: removed nodes go, added ones take the places of the nodes they replace, unused
    /// initializers are dropped only by the dead-code step, the rest is sorted topologically.
    pub fn finish(self) -> Result<(), String> {
        let old = std::mem::take(&mut self.graph.node);
        let mut keyed: Vec<((usize, usize), NodeProto)> = Vec::with_capacity(old.len());
        for (i, n) in old.into_iter().enumerate() {
            if !self.removed.contains(&i) {
                keyed.push(((i, 0), n));
            }
        }
        for (k, (at, n)) in self.added.into_iter().enumerate() {
            keyed.push(((at, k + 1), n));
        }
        keyed.sort_by_key(|(k, _)| *k);
        self.graph.initializer.extend(self.new_initializers);
        self.graph.node = topo_sort(keyed.into_iter().map(|(_, n)| n).collect())?;
        Ok(())
    }
}

/// The outer values a subgraph reads: its nodes' inputs that nothing inside it defines.
pub fn subgraph_inputs(g: &GraphProto) -> Vec<String> {
    let mut defined: HashSet<String> = g.input.iter().filter_map(|i| i.name.clone()).collect();
    defined.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
    let mut used = Vec::new();
    for n in &g.node {
        for a in &n.attribute {
            for sub in a.g.iter().chain(a.graphs.iter()) {
                used.extend(subgraph_inputs(sub));
            }
        }
        used.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        defined.extend(n.output.iter().cloned());
    }
    used.retain(|u| !defined.contains(u));
    used
}

/// Orders `nodes` so that each comes after the producers of its inputs, keeping the given order where it can.
pub fn topo_sort(nodes: Vec<NodeProto>) -> Result<Vec<NodeProto>, String> {
    let producer: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .filter(|(o, _)| !o.is_empty())
        .collect();
    let mut waiting = vec![0usize; nodes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let mut inputs: Vec<String> = n.input.clone();
        for a in &n.attribute {
            for g in a.g.iter().chain(a.graphs.iter()) {
                inputs.extend(subgraph_inputs(g));
            }
        }
        let parents: BTreeSet<usize> = inputs
            .iter()
            .filter_map(|s| producer.get(s.as_str()).copied())
            .filter(|&p| p != i)
            .collect();
        waiting[i] = parents.len();
        for p in parents {
            dependents[p].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() != nodes.len() {
        return Err(format!(
            "the graph has a cycle through {} nodes",
            nodes.len() - order.len()
        ));
    }
    let mut slots: Vec<Option<NodeProto>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// The INT attribute `name` of `node`.
pub fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    find_attr(node, name).and_then(|a| a.i)
}

/// The INTS attribute `name` of `node`.
pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    find_attr(node, name).map(|a| a.ints.clone())
}

/// The attribute `name` of `node`.
pub fn find_attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}
