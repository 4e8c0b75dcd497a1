//! A small ONNX graph builder: typed inputs and outputs with symbolic dimensions, nodes named
//! after the HF module they implement, constants and external-data initializers.

use crate::error::Result;
use crate::external::ExternalData;
use crate::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};

/// ONNX IR version written (IR 10 carries opset 21, needed for fp8 DequantizeLinear).
pub const IR_VERSION: i64 = 10;
/// Default-domain opset.
pub const OPSET: i64 = 21;
/// Microsoft contrib-op domain (MatMulNBits, GroupQueryAttention, …).
pub const MS_DOMAIN: &str = "com.microsoft";
/// st's own custom-op domain (MatMulInt4, MatMulFp8; implemented in the runtime, `st::engine::ops`).
pub const ST_DOMAIN: &str = "ai.st";

/// A tensor dimension: fixed, or named and chosen at run time.
#[derive(Debug, Clone, Copy)]
pub enum Dim<'a> {
    Fixed(usize),
    Sym(&'a str),
}

/// An attribute value.
pub enum Attr<'a> {
    Int(i64),
    Float(f32),
    Ints(&'a [i64]),
    Str(&'a str),
}

pub struct Graph {
    name: String,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
    pub external: ExternalData,
    uses_ms_domain: bool,
    uses_st_domain: bool,
}

fn value_info(name: &str, elem: DataType, dims: &[Dim<'_>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                Dim::Sym(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Graph {
    pub fn new(name: &str, external: ExternalData) -> Self {
        Self {
            name: name.to_string(),
            nodes: vec![],
            inputs: vec![],
            outputs: vec![],
            initializers: vec![],
            external,
            uses_ms_domain: false,
            uses_st_domain: false,
        }
    }

    /// Declare a graph input; returns its name for use in nodes.
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim<'_>]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Expose `value` as graph output `name` (through an Identity when the names differ).
    pub fn output(&mut self, value: &str, name: &str, elem: DataType, dims: &[Dim<'_>]) {
        if value != name {
            self.nodes.push(NodeProto {
                name: Some(format!("{name}/Identity")),
                op_type: Some("Identity".into()),
                input: vec![value.into()],
                output: vec![name.into()],
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, elem, dims));
    }

    /// Add node `name` of `op` with one output, named `{name}/out`.
    pub fn node(&mut self, name: &str, op: &str, inputs: &[&str], attrs: &[(&str, Attr<'_>)]) -> String {
        self.node_n(name, op, "", inputs, attrs, 1).remove(0)
    }

    /// Add a node with `n` outputs (`{name}/out`, `{name}/out1`, …) in `domain` ("" = ONNX).
    pub fn node_n(
        &mut self,
        name: &str,
        op: &str,
        domain: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr<'_>)],
        n: usize,
    ) -> Vec<String> {
        let output: Vec<String> =
            (0..n).map(|i| if i == 0 { format!("{name}/out") } else { format!("{name}/out{i}") }).collect();
        if domain == MS_DOMAIN {
            self.uses_ms_domain = true;
        }
        if domain == ST_DOMAIN {
            self.uses_st_domain = true;
        }
        let attribute = attrs.iter().map(|(k, v)| attribute(k, v)).collect();
        self.nodes.push(NodeProto {
            name: Some(name.to_string()),
            op_type: Some(op.to_string()),
            domain: (!domain.is_empty()).then(|| domain.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            attribute,
            ..Default::default()
        });
        output
    }

    /// A small int64 constant held inside the graph.
    pub fn const_i64(&mut self, name: &str, values: &[i64], dims: &[i64]) -> String {
        self.initializers.push(TensorProto {
            name: Some(name.to_string()),
            data_type: Some(DataType::Int64 as i32),
            dims: dims.to_vec(),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    /// A small f32 constant held inside the graph.
    pub fn const_f32(&mut self, name: &str, values: &[f32], dims: &[i64]) -> String {
        self.initializers.push(TensorProto {
            name: Some(name.to_string()),
            data_type: Some(DataType::Float as i32),
            dims: dims.to_vec(),
            float_data: values.to_vec(),
            ..Default::default()
        });
        name.to_string()
    }

    /// A weight written to the external data file now; the graph keeps its location.
    pub fn weight(&mut self, name: &str, elem: DataType, dims: &[usize], bytes: &[u8]) -> Result<String> {
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let t = self.external.tensor(name, elem, &dims, bytes)?;
        self.initializers.push(t);
        Ok(name.to_string())
    }

    /// A weight streamed into the external data file by `write` (exactly `len` bytes).
    pub fn weight_with(
        &mut self,
        name: &str,
        elem: DataType,
        dims: &[usize],
        len: u64,
        write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
    ) -> Result<String> {
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let t = self.external.tensor_with(name, elem, &dims, len, write)?;
        self.initializers.push(t);
        Ok(name.to_string())
    }

    /// The finished model and the external data writer (to be flushed by the caller).
    pub fn finish(self, producer: &str) -> (ModelProto, ExternalData) {
        let mut opset_import = vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }];
        if self.uses_ms_domain {
            opset_import.push(OperatorSetIdProto { domain: Some(MS_DOMAIN.into()), version: Some(1) });
        }
        if self.uses_st_domain {
            opset_import.push(OperatorSetIdProto { domain: Some(ST_DOMAIN.into()), version: Some(1) });
        }
        let graph = GraphProto {
            name: Some(self.name),
            node: self.nodes,
            input: self.inputs,
            output: self.outputs,
            initializer: self.initializers,
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(IR_VERSION),
            producer_name: Some(producer.to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            opset_import,
            graph: Some(graph),
            ..Default::default()
        };
        (model, self.external)
    }
}

fn attribute(name: &str, v: &Attr<'_>) -> AttributeProto {
    let mut a = AttributeProto { name: Some(name.to_string()), ..Default::default() };
    match v {
        Attr::Int(i) => {
            a.i = Some(*i);
            a.r#type = Some(AttributeType::Int as i32);
        }
        Attr::Float(f) => {
            a.f = Some(*f);
            a.r#type = Some(AttributeType::Float as i32);
        }
        Attr::Ints(v) => {
            a.ints = v.to_vec();
            a.r#type = Some(AttributeType::Ints as i32);
        }
        Attr::Str(s) => {
            a.s = Some(s.as_bytes().to_vec());
            a.r#type = Some(AttributeType::String as i32);
        }
    }
    a
}
