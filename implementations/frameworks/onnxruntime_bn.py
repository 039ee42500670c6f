"""ONNX Runtime: ``BatchNormalization`` run by an ``InferenceSession``, and ORT's Conv+BatchNormalization fusion.

**ort-batchnorm** builds a one-node ONNX graph (opset 15, ``onnx.helper``) and runs it on the CPU execution
provider. Weight, bias and the running statistics are fed as graph inputs on every call (the module keeps them as
torch Parameters and registered buffers), so one session serves a rank, dtype and attribute set. Eval mode runs
``training_mode=0``; training mode runs ``training_mode=1``, which ORT's CPU kernel implements (output with the
batch statistics, and the updated running statistics as two extra outputs, copied back into the buffers). The
momentum is ported as a careful user would: ONNX keeps ``momentum * old + (1 - momentum) * batch``, so the
attribute is ``1 - m``. An inference session computes no gradients: a step that asks for one (grad mode on and an
input or parameter that requires grad) is declined, not answered with an output autograd cannot follow.

ONNX attributes are 32-bit floats, so ``epsilon`` and ``momentum`` reach ORT rounded to float32. With float32 or
float16 data that is below the data's own rounding; with float64 parameters it is a difference of about 1e-8
relative that bncheck has no knob for, so float64 is declined unless both attributes are exact in float32.
ORT's CPU kernel has no bfloat16 BatchNormalization: declined.

**ort-conv-bn-fusion** builds Conv -> BatchNormalization with the weights as initializers, lets
``InferenceSession`` optimise it (``ORT_ENABLE_BASIC``, which holds ``ConvBNFusion``) into
``optimized_model_filepath``, and reads the fused Conv's weight and bias initializers back. ORT 1.32 fuses
ConvTranspose -> BatchNormalization too, so transposed convolutions go through the same path; a graph ORT leaves
unfused (a dtype or shape its fusion does not take) is declined with the nodes it kept.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

import bncheck

MISSING = "onnxruntime is not installed: pip install bncheck[frameworks]"
OPSET = 15
_LIB: dict = {}
_SESSIONS: dict = {}


def _lib():
    """Import onnx and onnxruntime on first use, or decline."""
    if not _LIB:
        try:
            import onnx
            import onnxruntime as ort
            from onnx import helper, numpy_helper
        except ImportError:
            raise bncheck.Unsupported(MISSING) from None
        _LIB.update(onnx=onnx, ort=ort, helper=helper, numpy_helper=numpy_helper)
    return _LIB


_ELEM = {torch.float32: "FLOAT", torch.float64: "DOUBLE", torch.float16: "FLOAT16"}


def _elem(dtype: torch.dtype) -> int:
    return getattr(_lib()["onnx"].TensorProto, _ELEM[dtype])


def _options(level: str = "ORT_DISABLE_ALL"):
    ort = _lib()["ort"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def _f32_exact(v: float) -> bool:
    return float(np.float32(v)) == v


def _session(rank: int, x_dtype: torch.dtype, p_dtype: torch.dtype, eps: float, momentum: float, training: bool):
    key = (rank, x_dtype, p_dtype, eps, momentum, training)
    if key not in _SESSIONS:
        lib = _lib()
        helper, ort = lib["helper"], lib["ort"]
        xt, pt = _elem(x_dtype), _elem(p_dtype)
        dims = ["N", "C"] + [f"S{i}" for i in range(rank - 2)]
        inputs = [helper.make_tensor_value_info("X", xt, dims)] + \
            [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("scale", "B", "input_mean", "input_var")]
        outputs = [helper.make_tensor_value_info("Y", xt, dims)]
        attrs = dict(epsilon=eps, momentum=1.0 - momentum, training_mode=int(training))
        if training:
            outputs += [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("running_mean", "running_var")]
        node = helper.make_node("BatchNormalization", ["X", "scale", "B", "input_mean", "input_var"],
                                [o.name for o in outputs], **attrs)
        model = helper.make_model(helper.make_graph([node], "batchnorm", inputs, outputs),
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        _SESSIONS[key] = ort.InferenceSession(model.SerializeToString(), _options(),
                                              providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").contiguous().numpy()


class OrtBatchNorm(torch.nn.Module):
    def __init__(self, spec: bncheck.Spec):
        super().__init__()
        c, kw = spec.num_features, dict(device="cpu", dtype=spec.dtype)
        self.eps, self.momentum = spec.eps, spec.momentum
        self.affine, self.track_running_stats = spec.affine, spec.track_running_stats
        if spec.affine:
            self.weight = torch.nn.Parameter(torch.ones(c, **kw))
            self.bias = torch.nn.Parameter(torch.zeros(c, **kw))
        else:
            self.weight = self.bias = None
        if spec.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(c, **kw))
            self.register_buffer("running_var", torch.ones(c, **kw))
        else:
            self.running_mean = self.running_var = None
        self._c, self._spec_dtype = c, spec.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = [x] + ([self.weight, self.bias] if self.affine else [])
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise bncheck.Unsupported("an ONNX Runtime inference session computes no gradients")
        if x.dtype not in _ELEM:
            raise bncheck.Unsupported(f"ORT's CPU BatchNormalization has no {x.dtype} kernel")
        held = self.weight if self.affine else self.running_mean     # its dtype now (.to() may have converted it)
        p_dtype = held.dtype if held is not None else self._spec_dtype
        if p_dtype not in _ELEM:
            raise bncheck.Unsupported(f"ORT's CPU BatchNormalization has no {p_dtype} kernel")
        kw = dict(dtype=p_dtype)
        ones, zeros = torch.ones(self._c, **kw), torch.zeros(self._c, **kw)
        scale, shift = (self.weight, self.bias) if self.affine else (ones, zeros)
        # torch without running statistics normalises with the batch statistics in both modes
        training = self.training or not self.track_running_stats
        mean, var = (self.running_mean, self.running_var) if self.track_running_stats else (zeros, ones)
        sess = _session(x.dim(), x.dtype, p_dtype, self.eps, self.momentum, training)
        outs = sess.run(None, {"X": _np(x), "scale": _np(scale), "B": _np(shift), "input_mean": _np(mean),
                               "input_var": _np(var)})
        if training and self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(torch.from_numpy(outs[1]))
                self.running_var.copy_(torch.from_numpy(outs[2]))
        y = torch.empty_like(x)            # torch's memory format (ORT returns contiguous arrays)
        y.copy_(torch.from_numpy(outs[0]))
        return y


# Documented semantic differences from torch (ONNX operator spec, BatchNormalization-15, training_mode=1:
# "running_var = input_var * momentum + current_var * (1 - momentum)" with current_var = ReduceVar(X), the
# population variance; ORT's CPU kernel follows it, and no minimum batch size is specified or enforced):
#   biased-running-var: running_var is updated with the biased batch variance.
#   missing-error: a batch of one value per channel in training gives var 0 (output = B); torch raises.
#   nan-inf: an empty batch in training: current_mean = ReduceMean(X) over no values, which the ReduceMean spec
#     leaves undefined; ORT's CPU kernel gives NaN and folds it into running_mean/running_var. torch returns the
#     empty output and leaves the statistics as they were.
@bncheck.implementation("ort-batchnorm", expect={"biased-running-var", "missing-error", "nan-inf"})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    _lib()
    if torch.device(spec.device).type != "cpu":
        raise bncheck.Unsupported(f"ort-batchnorm runs ORT's CPU execution provider (device {spec.device!r})")
    if spec.momentum is None:
        raise bncheck.Unsupported("ONNX BatchNormalization has no cumulative moving average (momentum=None)")
    if spec.dtype not in _ELEM:
        raise bncheck.Unsupported(f"ORT's CPU BatchNormalization has no {spec.dtype} kernel")
    if spec.dtype == torch.float64 and not (_f32_exact(spec.eps) and _f32_exact(1.0 - spec.momentum)):
        raise bncheck.Unsupported(f"ONNX attributes are float32: eps={spec.eps:g} / momentum={spec.momentum:g} "
                                  f"would be rounded (about 1e-8 relative), beyond float64 budgets")
    return OrtBatchNorm(spec)


def _fusion_model(W: np.ndarray, b, mean, var, scale, shift, eps: float, transposed: bool):
    lib = _lib()
    helper, numpy_helper = lib["helper"], lib["numpy_helper"]
    elem = lib["onnx"].helper.np_dtype_to_tensor_dtype(W.dtype)
    rank, c_out = W.ndim, mean.shape[0]
    # the weights alone decide the fold; the host convolution only has to be valid for them: an ungrouped Conv
    # over W.shape[1] input channels, or a ConvTranspose over W.shape[0] with C_out / W.shape[1] groups
    if transposed:
        op, c_in, attrs = "ConvTranspose", W.shape[0], dict(group=c_out // W.shape[1])
    else:
        op, c_in, attrs = "Conv", W.shape[1], {}
    x = helper.make_tensor_value_info("X", elem, ["N", c_in] + [f"S{i}" for i in range(rank - 2)])
    y = helper.make_tensor_value_info("Y", elem, None)
    inits = [numpy_helper.from_array(W, "W")]
    conv_in = ["X", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "Wb"))
        conv_in.append("Wb")
    for name, arr in (("scale", scale), ("B", shift), ("mean", mean), ("var", var)):
        inits.append(numpy_helper.from_array(arr, name))
    nodes = [helper.make_node(op, conv_in, ["conv_out"], kernel_shape=list(W.shape[2:]), **attrs),
             helper.make_node("BatchNormalization", ["conv_out", "scale", "B", "mean", "var"], ["Y"], epsilon=eps)]
    return helper.make_model(helper.make_graph(nodes, "conv_bn", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", OPSET)])


# ORT's fusion computes in the initializers' own dtype (like torch's fuse_conv_bn_weights in the parameter dtype)
# and reads epsilon from the 32-bit float attribute.
@bncheck.fusion("ort-conv-bn-fusion")
def fold(W, b, running_mean, running_var, weight, bias, eps, transposed):
    lib = _lib()
    if W.dtype not in _ELEM:
        raise bncheck.Unsupported(f"no ONNX Conv for {W.dtype}")
    if W.dtype == torch.float64 and not _f32_exact(eps):
        raise bncheck.Unsupported(f"ONNX's epsilon attribute is float32: eps={eps:g} would be rounded (about 1e-8 "
                                  f"relative), beyond float64 budgets")
    c = running_mean.shape[0]
    as_np = lambda t: None if t is None else _np(t).astype(_np(W).dtype, copy=False)   # noqa: E731
    scale = as_np(weight) if weight is not None else np.ones(c, _np(W).dtype)
    shift = as_np(bias) if bias is not None else np.zeros(c, _np(W).dtype)
    model = _fusion_model(_np(W), as_np(b), as_np(running_mean), as_np(running_var), scale, shift, eps,
                          transposed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = _options("ORT_ENABLE_BASIC")
        opts.optimized_model_filepath = path
        lib["ort"].InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        out = lib["onnx"].load(path)
    ops = [n.op_type for n in out.graph.node]
    op = "ConvTranspose" if transposed else "Conv"
    if "BatchNormalization" in ops or ops.count(op) != 1:
        raise bncheck.Unsupported(f"ORT left the graph unfused for {W.dtype}: nodes {ops}")
    # ORT's CPU Conv has no float16 kernel, so the saved graph may read the fused initializers through Casts
    produced_by = {o: n for n in out.graph.node for o in n.output}
    inits = {t.name: t for t in out.graph.initializer}

    def initializer(name):
        while name not in inits and name in produced_by and produced_by[name].op_type == "Cast":
            name = produced_by[name].input[0]
        return np.array(lib["numpy_helper"].to_array(inits[name]))
    conv = next(n for n in out.graph.node if n.op_type == op)
    W2, b2 = initializer(conv.input[1]), initializer(conv.input[2])
    return (torch.from_numpy(W2).to(W.device, W.dtype).reshape(W.shape),
            torch.from_numpy(b2).to(W.device, W.dtype))
