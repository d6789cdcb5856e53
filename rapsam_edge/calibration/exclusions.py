"""Which nodes stay in floating point, DERIVED from the traced ONNX graph (never from hard-coded names).

Each rule finds nodes by op type and structure and says why they are sensitive (design.md §5):

=======================  ====================================================================================
``first_conv``           the first Conv/MatMul fed by an image input (3 channels) through normalisation only:
                         raw-pixel statistics differ per channel and one layer carries all of it
``layernorm``            LayerNormalization: its statistics over a channel are destroyed by 8-bit inputs
``batchnorm``            BatchNormalization left unfolded (after the DCN's MatMul, which no BN folds into): no
                         int8 kernel exists, so quantizing it only adds int8 DequantizeLinear constants for its
                         scale/bias (which broke the cpu flavour's uint8-activation promise on rapsam_r18)
``softmax``              Softmax: exponentials of 8-bit logits lose the small probabilities
``attention``            MatMuls of attention (query·keyᵀ into a Softmax, probabilities·values out of one)
``attention_kv``         linear projections whose result is an attention query/key/value in this graph
``attention_kv_outputs`` projections whose result leaves the graph to be attention keys/values elsewhere: the
                         encoder's ``prompt_keys``/``prompt_values``. NOT a default: measured as in options.py
                         (ort, percentile, cpu) keeping them float cut the encoder speed-up from 2.35x to 1.85x
                         (3.4 GMAC at 640) and bought 0.7 dB on those outputs (25.8 -> 26.5 dB), whose error is
                         set by the quantized features they project
``mask_products``        MatMuls of two computed tensors that are not attention: kernel·features mask logits
                         and the hard-mask sum pooling (a sum over up to h·w pixels). NOT a default since the
                         object decoder is quantized by default: they are nearly all of its work (7 of its
                         13.4 GFLOP-dominating products at 640), so keeping them float left the INT8 object
                         decoder at 0.97x its fp32 (135.8 vs 132.3 ms, r18_lite 640, ort percentile cpu, 2
                         threads) against 1.16x (114.3 ms) quantized, at the same agreement with PyTorch (mask
                         IoU 0.799 vs 0.796, mask-logit cosine 0.922 vs 0.921; random weights). ``--max-drop``
                         moves them back to float where a trained model's metrics need it
``classifier``           the MatMul of an L2-normalised embedding with the class embeddings (cosine logits
                         scaled by 100: an 8-bit cosine error becomes a logit error of ~1)
=======================  ====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import onnx

from ..errors import InputError
from ..onnx_graph import shape_only_nodes

LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Expand"})
SCALE_OPS = frozenset({"Mul", "Div", "Add", "Sub"})  # with a constant other operand
LINEAR_OPS = frozenset({"MatMul", "Gemm"})
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


class GraphIndex:
    """Producers, consumers and constants of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.by_name = {n.name: n for n in self.nodes}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.constants = {t.name for t in g.initializer}
        for n in self.nodes:  # Constant nodes and anything computed from constants only
            if n.op_type == "Constant" or (n.input and all(i in self.constants or not i for i in n.input)):
                self.constants.update(n.output)
        self.inputs = {i.name: i for i in g.input if i.name not in self.constants}
        self.outputs = [o.name for o in g.output]

    def is_const(self, name: str) -> bool:
        return name in self.constants or not name

    def computed_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if not self.is_const(i)]

    def upstream(self, name: str, through: frozenset[str], depth: int = 8) -> onnx.NodeProto | None:
        """The first producer of ``name`` that is not a pass-through op (``through``, single computed input)."""
        node = self.producer.get(name)
        while node is not None and depth > 0 and node.op_type in through:
            computed = self.computed_inputs(node)
            if len(computed) != 1:
                return node
            node = self.producer.get(computed[0])
            depth -= 1
        return node

    def downstream(self, name: str, through: frozenset[str], depth: int = 8) -> list[onnx.NodeProto]:
        """The first consumers of ``name`` that are not pass-through ops, following every branch."""
        out: list[onnx.NodeProto] = []
        stack = [(c, depth) for c in self.consumers.get(name, [])]
        while stack:
            node, d = stack.pop()
            if node.op_type in through and d > 0 and len(self.computed_inputs(node)) == 1:
                for o in node.output:
                    stack.extend((c, d - 1) for c in self.consumers.get(o, []))
            else:
                out.append(node)
        return out

    def reaches_output(self, node: onnx.NodeProto, through: frozenset[str]) -> list[str]:
        """Graph outputs ``node`` produces directly or through pass-through ops."""
        found, stack = [], list(node.output)
        outputs = set(self.outputs)
        while stack:
            name = stack.pop()
            if name in outputs:
                found.append(name)
            for c in self.consumers.get(name, []):
                if c.op_type in through and len(self.computed_inputs(c)) == 1:
                    stack.extend(c.output)
        return found


def _image_inputs(ix: GraphIndex) -> list[str]:
    out = []
    for name, vi in ix.inputs.items():
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].dim_value == 3:
            out.append(name)
    return out


def first_conv(ix: GraphIndex, _: Context) -> list[str]:
    found = []
    through = LAYOUT_OPS | SCALE_OPS | {"Pad"}
    for name in _image_inputs(ix):
        found += [n.name for n in ix.downstream(name, frozenset(through)) if n.op_type in WEIGHTED_OPS]
    return found


def layernorm(ix: GraphIndex, _: Context) -> list[str]:
    return [n.name for n in ix.nodes if n.op_type in ("LayerNormalization", "InstanceNormalization")]


def batchnorm(ix: GraphIndex, _: Context) -> list[str]:
    return [n.name for n in ix.nodes if n.op_type == "BatchNormalization"]


def softmax(ix: GraphIndex, _: Context) -> list[str]:
    return [n.name for n in ix.nodes if n.op_type == "Softmax"]


def _dynamic_matmuls(ix: GraphIndex) -> list[onnx.NodeProto]:
    return [n for n in ix.nodes if n.op_type == "MatMul" and len(ix.computed_inputs(n)) == 2]


def _attention_matmuls(ix: GraphIndex) -> list[onnx.NodeProto]:
    through = frozenset(LAYOUT_OPS | SCALE_OPS)
    out = []
    for n in _dynamic_matmuls(ix):
        into_softmax = any(c.op_type == "Softmax" for c in ix.downstream(n.output[0], through))
        from_softmax = any((p := ix.upstream(i, through)) is not None and p.op_type == "Softmax" for i in n.input)
        if into_softmax or from_softmax:
            out.append(n)
    return out


def attention(ix: GraphIndex, _: Context) -> list[str]:
    return [n.name for n in _attention_matmuls(ix)]


def attention_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs of ``model`` that reach an attention MatMul through layout/scale ops only."""
    ix = GraphIndex(model)
    through = frozenset(LAYOUT_OPS | SCALE_OPS)
    operands = {i for n in _attention_matmuls(ix) for i in n.input}
    found = set()
    for name in ix.inputs:
        stack = [name]
        while stack:
            t = stack.pop()
            if t in operands:
                found.add(name)
                break
            for c in ix.consumers.get(t, []):
                if c.op_type in through and len(ix.computed_inputs(c)) == 1:
                    stack.extend(c.output)
    return found


def _projections(ix: GraphIndex) -> list[onnx.NodeProto]:
    return [n for n in ix.nodes if n.op_type in LINEAR_OPS and len(ix.computed_inputs(n)) == 1]


def attention_kv(ix: GraphIndex, _: Context) -> list[str]:
    through = frozenset(LAYOUT_OPS | SCALE_OPS)
    operands = {i for n in _attention_matmuls(ix) for i in n.input}
    found = []
    for n in _projections(ix):
        stack, hit = list(n.output), False
        while stack and not hit:
            t = stack.pop()
            hit = t in operands
            for c in ix.consumers.get(t, []):
                if c.op_type in through and len(ix.computed_inputs(c)) == 1:
                    stack.extend(c.output)
        if hit:
            found.append(n.name)
    return found


def attention_kv_outputs(ix: GraphIndex, ctx: Context) -> list[str]:
    through = frozenset(LAYOUT_OPS | SCALE_OPS)
    return [n.name for n in _projections(ix) if set(ix.reaches_output(n, through)) & ctx.attention_outputs]


def _graph_input_of(ix: GraphIndex, name: str) -> str | None:
    """The graph input ``name`` is, or is a reshaped/transposed view of."""
    for _ in range(8):
        if name in ix.inputs:
            return name
        node = ix.producer.get(name)
        if node is None or node.op_type not in LAYOUT_OPS or len(ix.computed_inputs(node)) != 1:
            return None
        name = ix.computed_inputs(node)[0]
    return None


def mask_products(ix: GraphIndex, _: Context) -> list[str]:
    attn = {n.name for n in _attention_matmuls(ix)}
    maps = {n for n, vi in ix.inputs.items() if len(vi.type.tensor_type.shape.dim) == 4} - set(_image_inputs(ix))
    on_map = [n.name for n in ix.nodes if n.op_type == "MatMul"
              and any(_graph_input_of(ix, i) in maps for i in ix.computed_inputs(n))]
    found = [n.name for n in _dynamic_matmuls(ix)] + on_map
    return [n for n in dict.fromkeys(found) if n not in attn]


def classifier(ix: GraphIndex, _: Context) -> list[str]:
    through = frozenset(LAYOUT_OPS)
    found = []
    for n in ix.nodes:
        if n.op_type not in LINEAR_OPS or len(ix.computed_inputs(n)) != 1:
            continue
        src = ix.upstream(ix.computed_inputs(n)[0], through)
        if src is not None and src.op_type == "LpNormalization":
            found.append(n.name)
        elif src is not None and src.op_type == "Div":
            norm = ix.upstream(src.input[1], frozenset(LAYOUT_OPS | {"Clip", "Max"}))
            if norm is not None and norm.op_type in ("ReduceL2", "Sqrt"):
                found.append(n.name)
    return found


@dataclass(frozen=True)
class Context:
    """Facts from outside the graph: its outputs that another graph uses as attention keys/values."""

    attention_outputs: frozenset[str] = frozenset()


def shape_only(ix: GraphIndex, _: Context) -> list[str]:
    """Nodes computed from the canvas shape alone (the CoordConv coordinate channels of a dynamic-canvas
    graph, sliced from a constant linspace table): constants for any given canvas, nothing to calibrate, and
    NNCF cannot place a quantizer on the edge out of the table initializer."""
    return [n for n in shape_only_nodes(ix.model) if n in ix.by_name and ix.by_name[n].op_type != "Constant"]


Rule = Callable[[GraphIndex, Context], list[str]]
RULES: dict[str, tuple[Rule, str]] = {
    "shape_only": (shape_only, "shape-only nodes (coordinate channels of a dynamic canvas)"),
    "first_conv": (first_conv, "first layer on raw pixels"),
    "layernorm": (layernorm, "LayerNormalization"),
    "batchnorm": (batchnorm, "unfolded BatchNormalization"),
    "softmax": (softmax, "Softmax"),
    "attention": (attention, "attention MatMuls (q·kᵀ, p·v)"),
    "attention_kv": (attention_kv, "projections into attention keys/values/queries"),
    "attention_kv_outputs": (attention_kv_outputs, "projections whose outputs are attention keys/values downstream"),
    "mask_products": (mask_products, "mask logit products and hard-mask pooling"),
    "classifier": (classifier, "cosine classifier MatMul"),
}
OPT_IN_RULES = ("attention_kv_outputs", "mask_products")
"""Rules measured not to pay as defaults (the table above says why); ``--rules`` names them to apply them."""
DEFAULT_RULES = tuple(r for r in RULES if r not in OPT_IN_RULES)


def derive(model: onnx.ModelProto, rules: Iterable[str] = DEFAULT_RULES, context: Context = Context()
           ) -> dict[str, list[str]]:
    """rule -> node names it keeps in floating point (each node listed under its first rule only)."""
    ix = GraphIndex(model)
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for rule in rules:
        if rule not in RULES:
            raise InputError(f"unknown exclusion rule {rule!r}; the rules are {', '.join(RULES)}.")
        names = [n for n in dict.fromkeys(RULES[rule][0](ix, context)) if n not in seen]
        seen.update(names)
        out[rule] = names
    return out


def apply_overrides(derived: dict[str, list[str]], model: onnx.ModelProto, exclude: Iterable[str] = (),
                    include: Iterable[str] = ()) -> list[str]:
    """The final exclusion list: derived + ``exclude`` - ``include`` (names must exist in the graph)."""
    names = {n.name for n in model.graph.node}
    for flag, given in (("--exclude", exclude), ("--include", include)):
        unknown = [n for n in given if n not in names]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], list(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{flag} names {unknown[0]!r}, which is not a node of the graph{hint}; "
                             "the exclusion list printed by calibrate shows the node names.")
    drop = set(include)
    final = [n for rule_names in derived.values() for n in rule_names if n not in drop]
    return list(dict.fromkeys(final + [n for n in exclude if n not in drop]))


def float_inputs(model: onnx.ModelProto, nodes: Iterable[str]) -> set[str]:
    """Activation inputs of ``nodes`` and, up through layout ops and constant scalings, the tensors they come
    from (the image normalisation in front of the first conv: an INT8 Sub/Div there would clip raw pixels)."""
    ix = GraphIndex(model)
    wanted = set(nodes)
    out: set[str] = set()
    for n in ix.nodes:
        if n.name not in wanted:
            continue
        for name in ix.computed_inputs(n):
            for _ in range(8):
                out.add(name)
                p = ix.producer.get(name)
                if p is None or p.op_type not in LAYOUT_OPS | SCALE_OPS or len(ix.computed_inputs(p)) != 1:
                    break
                name = ix.computed_inputs(p)[0]
    return out
