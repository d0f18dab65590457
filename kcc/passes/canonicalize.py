"""Target-independent clean-up of an imported graph (kpu_semantics.md §5.2, ncc's default transforms).

`canonicalize(g)` runs, until nothing changes:

    fold_constants   evaluate nodes whose inputs are all constants
    fold_transpose   compose / drop / sink transposes so the importer's NHWC<->NCHW pairs cancel;
                     a flatten of a transposed map into a constant matmul permutes its weights
    fold_reshape     reshape of reshape, identity reshape
    fold_nops        identity pad, slice, clamp, transpose, resize to the input's own size
    fold_channel_shuffle  reshapes and transposes through more than 4 axes that only permute the
                     channels of a map (ShuffleNet's channel shuffle) become one 1x1 conv with one-hot
                     weights: kmodel v4 holds 4-D tensors only
    fold_affine      a per-channel mul / add / sub into the conv or matmul before it (kcc.passes.affine):
                     the batch norms Caffe and ONNX keep as separate ops
    resize_after_pointwise  a resize read only by a 1x1 conv with fewer output than input channels
                     moves after the conv (BlazePalm's 12x12x256 -> 24x24 upsampling into a 1x1 conv
                     to 128 channels): both are linear, and every resized pixel is a weighted mean of
                     input pixels, bias included, so the conv reads a quarter of the pixels and the
                     resize half of the channels
    fold_pad_into_max_pool  a zero pad of a map that is never negative (a ReLU's) into the max
                     pool reading it (Keras' ZeroPadding2D before a VALID MaxPool2D): the pool's own
                     padding, which no window takes, as no zero wins where the values are >= 0
    fuse_clamp       a Clamp after an op with an `act` field becomes that field
    fuse_silu        x * logistic(x) becomes one silu(x) (ONNX Sigmoid+Mul, TFLite LOGISTIC+MUL), so the
                     KPU can take it as a conv's activation (kcc.passes.legalize_kpu)
    remove_dead      drop nodes no output depends on

Every function takes a Graph, edits it in place and returns it; each keeps the evaluator's output
unchanged (tests/passes/test_canonicalize.py checks each one against `kcc.eval.interpreter.run`).
Rewrites keep the name of the node they rewrite on the node computing the same value.

Notation: T_p(x) = x.transpose(p), so y = T_p(x) has y.shape[i] = x.shape[p[i]]: axis i of y *is*
axis p[i] of x. p⁻¹ is the inverse permutation, p⁻¹[p[i]] = i.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np

from kcc.eval.kernels import KERNELS
from kcc.ir import ops as O
from kcc.ir.graph import Graph, Node
from kcc.passes.affine import fold_affine

if TYPE_CHECKING:
    from kcc.passes.manager import CompileContext

Perm = tuple[int, ...]
_ELEMENTWISE = (O.Unary, O.Clamp, O.LeakyRelu)
_HAS_ACT = (O.Conv2D, O.Conv2DTranspose, O.MatMul, O.Binary, O.Pool2D)


def canonicalize(graph: Graph, ctx: CompileContext | None = None, *, max_rounds: int = 16) -> Graph:
    """Run every canonicalisation to a fixpoint (at most `max_rounds` rounds); needs nothing of `ctx`."""
    passes: list[Callable[[Graph], Graph]] = [fold_constants, fold_transpose, fold_reshape, fold_nops,
                                              fold_channel_shuffle, fold_affine, resize_after_pointwise,
                                              fold_pad_into_max_pool,
                                              fuse_clamp, fuse_silu, remove_dead]
    for _ in range(max_rounds):
        before = _fingerprint(graph)
        for p in passes:
            graph = p(graph)
        if _fingerprint(graph) == before:
            break
    return graph


def _fingerprint(g: Graph) -> tuple:
    return tuple((id(n), n.op, tuple(id(i) for i in n.inputs)) for n in g.nodes) + \
        tuple(id(o) for o in g.outputs)


# ------------------------------------------------------------------------------------ helpers
def _redirect(g: Graph, old: Node, new: Node) -> bool:
    """Every consumer of `old` other than `new` itself (and the graph outputs) now reads `new`.

    Returns whether anything was redirected.
    """
    hit = False
    for n in g.nodes:
        if n is not new and any(i is old for i in n.inputs):
            n.inputs = tuple(new if i is old else i for i in n.inputs)
            hit = True
    if any(o is old for o in g.outputs):
        g.outputs = [new if o is old else o for o in g.outputs]
        hit = True
    return hit


def _insert_after(g: Graph, anchor: Node, op: O.Op, inputs: tuple[Node, ...], name: str) -> Node:
    node = g.add(op, inputs, name, anchor.note)
    g.nodes.pop()
    g.nodes.insert(g.nodes.index(anchor) + 1, node)
    return node


def _rewrite(g: Graph, n: Node, op: O.Op, inputs: tuple[Node, ...]) -> None:
    n.op, n.inputs = op, inputs
    g.retype(n)


def _inverse(p: Perm) -> Perm:
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return tuple(inv)


def _perm_suffix(p: Perm) -> str:
    return {(0, 2, 3, 1): "nhwc", (0, 3, 1, 2): "nchw"}.get(tuple(p), "transpose")


def _is_transpose(n: Node) -> bool:
    return isinstance(n.op, O.Transpose)


# ------------------------------------------------------------------------------------ constants
def fold_constants(g: Graph) -> Graph:
    """Replace a node whose inputs are all Constants by a Constant of its value (same name).

        %y = op(%c1, %c2)   ==>   %y = const[op(c1, c2)]

    The value comes from the float evaluator's own kernel, so folding cannot change results.
    """
    for n in g.nodes:
        if n.inputs and all(i.is_constant for i in n.inputs):
            value = KERNELS[type(n.op)](n.op, *(i.data for i in n.inputs))
            _rewrite(g, n, O.Constant(np.ascontiguousarray(value, dtype=n.dtype.numpy)), ())
    return g


# ------------------------------------------------------------------------------------ transposes
def fold_transpose(g: Graph) -> Graph:
    """Compose, drop and sink transposes until the importer's layout pairs meet and cancel.

    Compose:  T_q(T_p(x)) = T_r(x) with r[i] = p[q[i]]   (y2[i] is y1[q[i]] is x[p[q[i]]])
    Drop:     T_id(x) = x
    Sink:     op(T_p(x)) = T_p(op'(x)) for every op that has no layout of its own:

        %t = transpose[p](%x)             %r = relu(%x)
        %r = relu(%t)            ==>      %r/nhwc = transpose[p](%r)
        %u = transpose[p⁻¹](%r)           %u = transpose[p⁻¹](%r/nhwc)     -> composes to %r

    Sinking moves every transpose down to the next op that does care about layout (a conv wrapped
    in the inverse transpose, a reshape, a graph output), where it composes to the identity or stays
    because it is truly needed. Finally a transpose that only moves size-1 axes becomes a Reshape.
    """
    changed = True
    while changed:
        changed = False
        i = 0
        while i < len(g.nodes):  # nodes inserted after i are visited in the same sweep
            changed |= _transpose_rule(g, g.nodes[i])
            i += 1
    for n in g.nodes:
        if _is_transpose(n) and _moves_only_unit_axes(n.inputs[0].shape, n.op.perm):
            _rewrite(g, n, O.Reshape(n.shape), n.inputs)
    return g


def _transpose_rule(g: Graph, n: Node) -> bool:
    if isinstance(n.op, O.MatMul):
        return _absorb_into_matmul(g, n)
    if not _is_transpose(n):
        return _sink(g, n)
    changed = False
    if _is_transpose(n.inputs[0]):
        p, q = n.inputs[0].op.perm, n.op.perm
        _rewrite(g, n, O.Transpose(tuple(p[k] for k in q)), n.inputs[0].inputs)
        changed = True
    if tuple(n.op.perm) == tuple(range(len(n.op.perm))):
        changed |= _redirect(g, n, n.inputs[0])
    return changed


def _absorb_into_matmul(g: Graph, n: Node) -> bool:
    """Flattening a transposed map before a matmul with constant weights permutes the weight rows.

        %t = transpose[0,2,3,1](%x)    : [N,H,W,C]         %f = reshape[N,CHW](%x)
        %f = reshape[N,HWC](%t)                    ==>     %y = matmul(%f, %w')
        %y = matmul(%f, %w)

    Row k of the flattened T_p(x) is element idx[k] of the flattened x, so
    f_t @ w = f_x @ w' with w'[idx[k]] = w[k] (the CHW-vs-HWC flatten of a conv feeding a dense layer).
    """
    a, w, _ = n.inputs
    if not (isinstance(a.op, O.Reshape) and _is_transpose(a.inputs[0]) and w.is_constant):
        return False
    t = a.inputs[0]
    x, p = t.inputs[0], t.op.perm
    if p[0] != 0 or a.shape != (x.shape[0], x.type.size // x.shape[0]):
        return False
    idx = np.arange(a.shape[1]).reshape(x.shape[1:]).transpose([d - 1 for d in p[1:]]).ravel()
    w_new = np.empty_like(w.data)
    w_new[idx] = w.data
    flat = g.insert_before(n, O.Reshape(a.shape), (x,), a.name)
    w_node = g.insert_before(n, O.Constant(w_new), (), f"{w.name}/rows")
    _rewrite(g, n, n.op, (flat, w_node, n.inputs[2]))
    return True


def _moves_only_unit_axes(shape: tuple[int, ...], perm: Perm) -> bool:
    """True if the axes of size > 1 keep their relative order, so the transpose is a reshape."""
    big = [a for a in perm if shape[a] != 1]
    return big == sorted(big)


def _sink(g: Graph, n: Node) -> bool:
    """Try op(T_p(x), ...) -> T_p(op'(x, ...)); returns whether `n` was rewritten."""
    ts = [i for i in n.inputs if _is_transpose(i)]
    if not ts or isinstance(n.op, (O.Transpose, O.Input, O.Constant)):
        return False
    p = ts[0].op.perm
    rank = len(p)
    if any(t.op.perm != p for t in ts):
        return False
    plan = _sink_op(n.op, p, [i.shape for i in n.inputs], [i.is_constant for i in n.inputs],
                    [_is_transpose(i) for i in n.inputs])
    if plan is None:
        return False
    new_op, out_perm = plan
    inputs = []
    for i in n.inputs:
        if _is_transpose(i):
            inputs.append(i.inputs[0])
        elif i.is_constant and i.data.ndim > 0:  # broadcast to rank, then lay out like x
            data = i.data.reshape((1,) * (rank - i.data.ndim) + i.data.shape).transpose(_inverse(p))
            name = f"{i.name}/{_perm_suffix(_inverse(p))}"
            inputs.append(g.insert_before(n, O.Constant(np.ascontiguousarray(data)), (), name))
        else:
            inputs.append(i)
    _rewrite(g, n, new_op, tuple(inputs))
    if out_perm is not None:
        t = _insert_after(g, n, O.Transpose(out_perm), (n,), f"{n.name}/{_perm_suffix(out_perm)}")
        _redirect(g, n, t)
    return True


def _sink_op(op: O.Op, p: Perm, shapes: list[tuple[int, ...]], const: list[bool],
             transposed: list[bool]) -> tuple[O.Op, Perm | None] | None:
    """The op' and the transpose to put after it for op(T_p(x)), or None if it does not commute.

    Axis i of y = T_p(x) is axis p[i] of x, hence:
        element-wise, clamp, leaky_relu      op' = op
        binary / prelu with constant c       c' = T_p⁻¹(c padded to rank with leading 1s), since
                                             T_p(x) ∘ c = T_p(x ∘ T_p⁻¹(c)); scalars stay as they are
        binary of T_p(a), T_p(b)             op'(a, b)
        softmax / l2_normalize / concat      axis' = p[axis]
        pad, strided_slice                   the entry for x's axis j is the old entry p⁻¹[j]
        reduce(keepdims)                     axes' = {p[a]}
        reduce(no keepdims)                  axes' = {p[a]}; the kept axes come out in x's order, so
                                             the transpose after it is q with q[k] = rank of p[i_k]
                                             among the kept x axes (none if q is the identity)
    Inputs that are not T_p must be constants (re-laid out by the caller).
    """
    rank = len(p)
    if not all(t or c for t, c in zip(transposed, const)):
        return None
    if any(c and len(s) > rank for s, c in zip(shapes, const)):
        return None
    if isinstance(op, _ELEMENTWISE + (O.Binary, O.PRelu)):
        if isinstance(op, O.PRelu) and not transposed[0]:
            return None
        return op, p
    if isinstance(op, O.Softmax):
        return O.Softmax(p[op.axis], op.beta), p
    if isinstance(op, O.L2Normalize):
        return O.L2Normalize(p[op.axis], op.eps), p
    if isinstance(op, O.Concat):
        if any(c and len(s) != rank for s, c in zip(shapes, const)):
            return None
        return O.Concat(p[op.axis]), p
    if isinstance(op, O.Pad):
        inv = _inverse(p)
        return O.Pad(tuple(op.paddings[inv[j]] for j in range(rank)), op.value), p
    if isinstance(op, O.StridedSlice):
        inv = _inverse(p)
        return O.StridedSlice(*(tuple(v[inv[j]] for j in range(rank)) for v in (op.begin, op.end, op.strides))), p
    if isinstance(op, O.Reduce):
        axes = tuple(sorted(p[a] for a in op.axes))
        if op.keepdims:
            return O.Reduce(op.op, axes, True), p
        kept = [j for j in range(rank) if j not in axes]
        q = tuple(kept.index(p[i]) for i in range(rank) if i not in op.axes)
        return O.Reduce(op.op, axes, False), (None if q == tuple(range(len(q))) else q)
    return None


# ------------------------------------------------------------------------------------ reshapes, no-ops
def fold_reshape(g: Graph) -> Graph:
    """Reshape(Reshape(x)) = Reshape(x) (only the final shape matters); Reshape to x's own shape = x.

        %a = reshape[1,1,1,8](%x)                 %b = reshape[1,8](%x)
        %b = reshape[1,8](%a)           ==>
    """
    for n in g.nodes:
        if isinstance(n.op, O.Reshape):
            while isinstance(n.inputs[0].op, O.Reshape):
                n.inputs = n.inputs[0].inputs
            if n.shape == n.inputs[0].shape:
                _redirect(g, n, n.inputs[0])
    return g


def fold_nops(g: Graph) -> Graph:
    """Drop ops that return their input unchanged: all-zero Pad, whole-range StridedSlice with
    stride 1, Clamp(-inf, inf), Transpose by the identity, Resize to the input's size (every mode
    and flag then samples each pixel at itself: scale 1, and half-pixel centres cancel out;
    deeplabv3's ResizeBilinear_2 resizes its 33x33 logits to 33x33).

        %y = pad[((0,0),(0,0))](%x)     ==>    (uses of %y read %x)
    """
    for n in g.nodes:
        op = n.op
        nop = (isinstance(op, O.Pad) and all(b == a == 0 for b, a in op.paddings)) or \
              (isinstance(op, O.StridedSlice) and n.shape == n.inputs[0].shape and all(s == 1 for s in op.strides)) or \
              (isinstance(op, O.Clamp) and (op.lo, op.hi) == O.NO_CLAMP) or \
              (isinstance(op, O.Transpose) and tuple(op.perm) == tuple(range(len(op.perm)))) or \
              (isinstance(op, O.Resize) and n.shape == n.inputs[0].shape)
        if nop:
            _redirect(g, n, n.inputs[0])
    return g


def fold_channel_shuffle(g: Graph) -> Graph:
    """A chain of reshapes and transposes, some tensor of it over 4 axes, from a map x [1, C, H, W] to
    one of its shape whose value is x's channels permuted (ShuffleNet's channel shuffle, exported as
    reshape to [1, H, W, g, C/g], transpose, reshape back) becomes a 1x1 conv of x with one-hot weights,
    which the KPU and the CPU both run (kmodel v4 tensors have at most 4 axes). Found by running the
    chain's own kernels on the index of each element of x.

        %a = reshape[1,16,16,2,16](%t)   %b = transpose[0,1,2,4,3](%a)
        %c = reshape[1,16,16,32](%b)     %y = transpose[0,3,1,2](%c)     ==>   %y = conv2d(%x, one-hot)
    """
    users = g.users()
    for n in list(g.nodes):
        chain, x = [], n
        while isinstance(x.op, (O.Reshape, O.Transpose)) and (x is n or len(users[x]) == 1):
            chain.append(x)
            x = x.inputs[0]
        if (len(chain) < 2 or n.type.rank != 4 or x.shape != n.shape or x.shape[0] != 1
                or all(c.type.rank <= 4 for c in chain)):
            continue
        value = np.arange(int(np.prod(x.shape))).reshape(x.shape)
        for c in reversed(chain):
            value = KERNELS[type(c.op)](c.op, value)
        plane = x.shape[2] * x.shape[3]
        perm = value[0, :, 0, 0] // plane
        if sorted(perm.tolist()) != list(range(x.shape[1])) or not np.array_equal(
                value, np.arange(value.size).reshape(x.shape)[:, perm]):
            continue
        c = x.shape[1]
        w = np.zeros((c, c, 1, 1), np.float32)
        w[np.arange(c), perm, 0, 0] = 1.0
        wn = _insert_after(g, x, O.Constant(w), (), g.unique_name(n.name + "/shuffle_w"))
        bn = _insert_after(g, wn, O.Constant(np.zeros(c, np.float32)), (), g.unique_name(n.name + "/shuffle_b"))
        _rewrite(g, n, O.Conv2D(), (x, wn, bn))
        g.nodes.remove(n)
        g.nodes.insert(g.nodes.index(bn) + 1, n)
        users = g.users()
    return g


def resize_after_pointwise(g: Graph) -> Graph:
    """conv1x1(resize(x)) -> resize(conv1x1(x)) when the conv has fewer output channels than input
    ones, no clamp, and is the resize's only reader. A resize's output pixel is a weighted sum of input
    pixels whose weights add up to 1 (bilinear: the lerp weights; nearest: one pixel), so a per-pixel
    affine map (W x + b) gives the same value before or after it. Both ops then do less work: the conv
    runs over the input's pixels, the resize over the conv's channels.

        %r = resize[bilinear 24x24](%x: 256 x 12x12)
        %y = conv2d[1x1](%r, w: 128x256)       ==>   %c = conv2d[1x1](%x, w)   %y = resize(%c)
    """
    users = g.users()
    for n in list(g.nodes):
        op, r = n.op, n.inputs[0] if n.inputs else None
        if not (isinstance(op, O.Conv2D) and r is not None and isinstance(r.op, O.Resize)
                and len(users[r]) == 1 and r not in g.outputs and op.groups == 1 and op.act == O.NO_CLAMP
                and n.inputs[1].shape[2:] == (1, 1) and op.stride == (1, 1) and op.padding == ((0, 0), (0, 0))
                and n.shape[1] < r.shape[1]):
            continue
        low = g.insert_before(n, op, (r.inputs[0], *n.inputs[1:]), g.unique_name(n.name + "/before_resize"),
                              n.note)
        _rewrite(g, n, r.op, (low,))
        users = g.users()
    return g


def _nonneg(n: Node) -> bool:
    """n's value is never negative by construction: a clamp, or an op's fused one, from 0 or more."""
    return (isinstance(n.op, _HAS_ACT) and n.op.act[0] >= 0) or (isinstance(n.op, O.Clamp) and n.op.lo >= 0)


def fold_pad_into_max_pool(g: Graph) -> Graph:
    """max_pool(pad(x, 0 on H and W)) -> max_pool(x) with the pad added to its padding, when x is never
    negative and every window keeps a tap of x (the pad less than the window): the max of a window
    with zeros among values >= 0 is the max of the values.

        %p = pad[0, (0,0),(0,0),(1,1),(1,1)](%r)      %y = pool2d[max, 3x3, s2, pad (1,1),(1,1)](%r)
        %y = pool2d[max, 3x3, s2, VALID](%p)   ==>
    """
    for n in g.nodes:
        op = n.op
        if not (isinstance(op, O.Pool2D) and op.op == "max" and isinstance(n.inputs[0].op, O.Pad)):
            continue
        pad = n.inputs[0]
        p = pad.op.paddings
        if not (pad.op.value == 0.0 and len(p) == 4 and p[0] == p[1] == (0, 0) and _nonneg(pad.inputs[0])):
            continue
        padding = tuple((a + b, c + d) for (a, c), (b, d) in zip(op.padding, p[2:]))
        if any(max(a, b) >= f for (a, b), f in zip(padding, op.filter)):
            continue
        _rewrite(g, n, dataclasses.replace(op, padding=padding), (pad.inputs[0],))
    return g


def fuse_clamp(g: Graph) -> Graph:
    """clamp(op(x), lo, hi) -> op[act ∩ (lo, hi)](x) when the clamp is op's only consumer.

    clamp(clamp(v, a, b), c, d) = clamp(v, max(a, c), min(b, d)) as long as the two intervals
    overlap (otherwise the result is a constant and the rule does not apply).

        %c = conv2d[act=(-inf,inf)](...)          %r = conv2d[act=(0,inf)](...)
        %r = clamp[0,inf](%c)          ==>
    """
    users = g.users()
    for n in g.nodes:
        if not isinstance(n.op, O.Clamp):
            continue
        src = n.inputs[0]
        if not isinstance(src.op, _HAS_ACT) or len(users[src]) != 1 or src in g.outputs:
            continue
        lo, hi = max(src.op.act[0], n.op.lo), min(src.op.act[1], n.op.hi)
        if lo > hi:
            continue
        _rewrite(g, n, _with_act(src.op, (lo, hi)), src.inputs)
        users = g.users()
    return g


def fuse_silu(g: Graph) -> Graph:
    """mul(x, logistic(x)) -> silu(x), either operand order, when the mul is the logistic's only
    consumer (else the logistic stays computed anyway) and the mul has no fused clamp.

        %s = unary[logistic](%x)
        %y = binary[mul](%x, %s)      ==>   %y = unary[silu](%x)

    PyTorch exports SiLU / Swish this way (torch.nn.SiLU has no ONNX op before opset 22), as does the
    TFLite converter. The evaluator computes silu as x / (1 + exp(-x)), within float32 rounding of
    the product.
    """
    users = g.users()
    for n in g.nodes:
        op = n.op
        if not (isinstance(op, O.Binary) and op.op == "mul" and op.act == O.NO_CLAMP):
            continue
        a, b = n.inputs
        for x, s in ((a, b), (b, a)):
            if isinstance(s.op, O.Unary) and s.op.op == "logistic" and s.inputs[0] is x and x is not s \
                    and len(users[s]) == 1 and s not in g.outputs and n.type == x.type:
                _rewrite(g, n, O.Unary("silu"), (x,))
                users = g.users()
                break
    return g


def _with_act(op: O.Op, act: tuple[float, float]) -> O.Op:
    return dataclasses.replace(op, act=act)


def remove_dead(g: Graph) -> Graph:
    """Drop nodes no graph output depends on (graph inputs always stay)."""
    g.remove_dead()
    return g
