"""Make the real PyTorch ONNX exports of tests/reference/onnx_exports (issue #17 item 4), once.

The maintainers hold back four kinds of real K210 models (a YOLOX, an opset-9 PyTorch 1.2 export with
initializers as inputs, a masked-face SSD detector, a Caffe RFB). This script defines small PyTorch
models by hand that are built like the first three (and one that covers the remaining activation and
resampling ops), with random weights from fixed seeds (no download, no pretrained weights), and exports
each with PyTorch's TorchScript exporter (`dynamo=False`), which writes what real exports of those
families look like: old opsets, initializers listed as graph inputs, unfolded shape chains.

| file | imitates | opset | notable |
|---|---|---|---|
| yolox_nano_like.onnx | YOLOX-nano (Megvii): Focus, CSPDarknet with depthwise convs, SPP, PAFPN, decoupled head | 11 | 4 strided Slices + Concat (Focus), SiLU as Sigmoid*Mul, MaxPool 5/9/13 stride 1, Resize nearest x2, the export-mode head (sigmoid on obj/cls, levels flattened, concatenated, transposed) |
| mbv2_opset9_pt12.onnx | a PyTorch 1.2 export of a MobileNetV2 classifier | 9 | keep_initializers_as_inputs, no constant folding: Clip(min, max attributes) for ReLU6, residual Adds, GlobalAveragePool, `x.view(x.size(0), -1)` as Shape->Gather->Unsqueeze->Concat->Reshape, Gemm |
| mask_ssd_like.onnx | the AIZOO masked-face SSD detector (face / mask, 5 heads) | 11 | 3x3 stride-2 convs with padding=1, heads Transpose(0,2,3,1)->Reshape->Concat, Softmax over 2 classes |
| misc_ops.onnx | a small encoder-decoder | 14 | ConvTranspose, PRelu, LeakyRelu, HardSwish, Sigmoid, Resize bilinear (align_corners=False) |

Inputs are NCHW float32, image-like, meant for (pixel/255 - 0.5)/0.5 in [-1, 1] (the tests feed that
range). The files are deterministic for a given PyTorch version: made with torch 2.13.0+cpu, onnx 1.23.2,
Pillow 13.0.0 on CPython 3.11 (the exporter's node names depend on the PyTorch version, the numbers do not).

Command (from the repository root, with a separate venv that has the CPU torch wheel; never the project
venv, the tests do not need torch):

    python3.11 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl onnx numpy pillow
    /tmp/torchenv/bin/python tests/reference/onnx_exports/make_exports.py

License: made here, Apache-2.0 like the repository.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

GAMMA = (0.2, 0.6)  # the batch norms' random scales: small enough that the net is not chaotic
HERE = Path(__file__).resolve().parent
PHOTO = HERE.parent / "ncc-outputs" / "infer" / "inputs" / "ulffd_img" / "20.jpg"  # nncase's example photo


def smooth_images(shape, count: int, gen: torch.Generator) -> torch.Tensor:
    """Picture-like inputs in [-1, 1]: low-resolution noise upsampled (smooth regions, edges) plus fine
    grain, so that every layer sees spatially correlated maps as it would on photos."""
    _, c, h, w = shape
    low = torch.rand((count, c, max(h // 8, 2), max(w // 8, 2)), generator=gen) * 2 - 1
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (x + 0.1 * torch.randn((count, c, h, w), generator=gen)).clamp(-1, 1)


def photo_crops(shape, count: int, gen: torch.Generator) -> torch.Tensor:
    """Random square crops of the repository's face photo, resized to the input, in [-1, 1]."""
    from PIL import Image

    _, _, h, w = shape
    out = []
    with Image.open(PHOTO) as im:
        im = im.convert("RGB")
        for _ in range(count):
            side = int(torch.randint(96, min(im.size) + 1, (1,), generator=gen))
            x0 = int(torch.randint(0, im.size[0] - side + 1, (1,), generator=gen))
            y0 = int(torch.randint(0, im.size[1] - side + 1, (1,), generator=gen))
            crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((w, h), Image.BILINEAR)
            out.append(torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(h, w, 3))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 127.5 - 1


def make_trained_looking(net: nn.Module, shape, gen: torch.Generator) -> None:
    """Random weights that behave like trained ones: variance-keeping conv weights (He init), random
    per-channel batch-norm scales and shifts, and each batch norm's statistics measured at inference
    (eval mode) on its actual input, one after the other in network order, so that every normalised
    map has the scale its batch norm gives it. Pictures: crops of the face photo the tests also use
    (other crops) and smooth random pictures. With PyTorch's default init and fresh statistics (mean 0,
    var 1) the activations shrink layer by layer and a deep net's output hardly depends on its input,
    which would test nothing; statistics accumulated in train mode do not match eval mode in a deep
    net (each layer saw batch-normalised inputs) and blow activations up tenfold."""
    bns = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.3 + 0.05)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * (GAMMA[1] - GAMMA[0]) + GAMMA[0])
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
            bns.append(m)
    net.eval()
    data = torch.cat([photo_crops(shape, 128, gen), smooth_images(shape, 32, gen)])
    seen = {}
    for bn in bns:  # nn.Module order is forward order in these models: upstream statistics are final
        hook = bn.register_forward_pre_hook(lambda m, inp: seen.__setitem__("x", inp[0]))
        net(data)
        hook.remove()
        bn.running_mean.copy_(seen["x"].mean(dim=(0, 2, 3)))
        bn.running_var.copy_(seen["x"].var(dim=(0, 2, 3), unbiased=False))


# ------------------------------------------------------------------------------------ 1. YOLOX-nano
class BaseConv(nn.Module):
    """YOLOX's conv + BN + SiLU (export: SiLU = x * sigmoid(x), as YOLOX's export replaces nn.SiLU)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x * torch.sigmoid(x) if self.act else x


class DWConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 (YOLOX-nano's depthwise=True)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__()
        self.dconv = BaseConv(cin, cin, k, stride, groups=cin)
        self.pconv = BaseConv(cin, cout, 1)

    def forward(self, x):
        return self.pconv(self.dconv(x))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.conv1 = BaseConv(c, c, 1)
        self.conv2 = DWConv(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class CSPLayer(nn.Module):
    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        hidden = cout // 2
        self.conv1 = BaseConv(cin, hidden, 1)
        self.conv2 = BaseConv(cin, hidden, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, shortcut) for _ in range(n)])
        self.conv3 = BaseConv(2 * hidden, cout, 1)

    def forward(self, x):
        return self.conv3(torch.cat([self.m(self.conv1(x)), self.conv2(x)], dim=1))


class SPP(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        hidden = cin // 2
        self.conv1 = BaseConv(cin, hidden, 1)
        self.pools = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13)])
        self.conv2 = BaseConv(hidden * 4, cout, 1)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [p(x) for p in self.pools], dim=1))


class Focus(nn.Module):
    """Space-to-depth by four strided slices and a concat, then a conv (YOLOX's stem)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = BaseConv(cin * 4, cout, 3)

    def forward(self, x):
        tl, bl = x[..., ::2, ::2], x[..., 1::2, ::2]
        tr, br = x[..., ::2, 1::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat((tl, bl, tr, br), dim=1))


class YoloxNanoLike(nn.Module):
    NUM_CLASSES = 3

    def __init__(self):
        super().__init__()
        w = (8, 12, 16, 24)  # YOLOX-nano's (16, 32, 64, 128, 256) cut down
        self.stem = Focus(3, w[0])
        self.dark2 = nn.Sequential(DWConv(w[0], w[1], 3, 2), CSPLayer(w[1], w[1]))
        self.dark3 = nn.Sequential(DWConv(w[1], w[2], 3, 2), CSPLayer(w[2], w[2]))
        self.dark4 = nn.Sequential(DWConv(w[2], w[3], 3, 2), SPP(w[3], w[3]), CSPLayer(w[3], w[3], shortcut=False))
        # PAFPN: top-down (upsample + concat) then bottom-up (stride-2 conv + concat)
        self.lateral = BaseConv(w[3], w[2], 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c3_p4 = CSPLayer(2 * w[2], w[2], shortcut=False)
        self.down = DWConv(w[2], w[2], 3, 2)
        self.c3_n4 = CSPLayer(2 * w[2], w[3], shortcut=False)
        # decoupled heads, one per level (stride 8: w[2] channels, stride 16: w[3])
        hw = 12
        self.stems = nn.ModuleList([BaseConv(c, hw, 1) for c in (w[2], w[3])])
        self.cls_convs = nn.ModuleList([nn.Sequential(DWConv(hw, hw, 3), DWConv(hw, hw, 3)) for _ in range(2)])
        self.reg_convs = nn.ModuleList([nn.Sequential(DWConv(hw, hw, 3), DWConv(hw, hw, 3)) for _ in range(2)])
        self.cls_preds = nn.ModuleList([nn.Conv2d(hw, self.NUM_CLASSES, 1) for _ in range(2)])
        self.reg_preds = nn.ModuleList([nn.Conv2d(hw, 4, 1) for _ in range(2)])
        self.obj_preds = nn.ModuleList([nn.Conv2d(hw, 1, 1) for _ in range(2)])

    def forward(self, x):
        x = self.stem(x)
        x = self.dark2(x)
        c3 = self.dark3(x)  # stride 8
        c4 = self.dark4(c3)  # stride 16
        p4 = self.lateral(c4)
        p3 = self.c3_p4(torch.cat([self.up(p4), c3], dim=1))
        n4 = self.c3_n4(torch.cat([self.down(p3), p4], dim=1))
        outputs = []
        for k, feat in enumerate((p3, n4)):
            feat = self.stems[k](feat)
            cls = self.cls_preds[k](self.cls_convs[k](feat))
            reg_feat = self.reg_convs[k](feat)
            reg, obj = self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat)
            outputs.append(torch.cat([reg, torch.sigmoid(obj), torch.sigmoid(cls)], dim=1))
        # YOLOX's export (decode_in_inference=False): [1, anchors, 5 + classes]
        return torch.cat([o.flatten(start_dim=2) for o in outputs], dim=2).permute(0, 2, 1)


# ------------------------------------------------------------------- 2. MobileNetV2, PyTorch 1.2 style
class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [ConvBNReLU(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Like(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        # (expand, out channels, repeats, first stride) as torchvision's table, widths cut down
        setting = [(1, 8, 1, 1), (4, 8, 2, 2), (4, 12, 2, 2), (4, 16, 2, 2)]
        layers: list[nn.Module] = [ConvBNReLU(3, 8, 3, 2)]
        cin = 8
        for t, c, n, s in setting:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU(cin, 48, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(48, classes))

    def forward(self, x):
        x = self.pool(self.features(x))
        x = x.view(x.size(0), -1)  # PyTorch 1.2 exports this as Shape->Gather->Unsqueeze->Concat->Reshape
        return self.classifier(x)


# ---------------------------------------------------------------------------- 3. masked-face SSD
class MaskSSDLike(nn.Module):
    """AIZOO FaceMaskDetection's layout: a plain conv/BN/ReLU backbone (3x3, padding 1, stride-2 convs
    and max pools), five detection levels, each with a loc head (4) and a cls head (face, mask)."""

    ANCHORS = (3, 2, 2, 2, 2)

    def __init__(self):
        super().__init__()

        def cbr(cin, cout, stride=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        self.b1 = nn.Sequential(cbr(3, 8, 2), cbr(8, 8), nn.MaxPool2d(2, 2), cbr(8, 12), cbr(12, 12, 2))  # /8
        self.b2 = nn.Sequential(cbr(12, 16, 2), cbr(16, 16))  # /16
        self.b3 = cbr(16, 16, 2)  # /32
        self.b4 = cbr(16, 16, 2)  # /64
        self.b5 = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU(inplace=True), cbr(16, 16, 2))  # /128
        chans = (12, 16, 16, 16, 16)
        self.loc = nn.ModuleList([nn.Conv2d(c, a * 4, 3, 1, 1) for c, a in zip(chans, self.ANCHORS)])
        self.cls = nn.ModuleList([nn.Conv2d(c, a * 2, 3, 1, 1) for c, a in zip(chans, self.ANCHORS)])

    def forward(self, x):
        feats = []
        for block in (self.b1, self.b2, self.b3, self.b4, self.b5):
            x = block(x)
            feats.append(x)
        locs, confs = [], []
        for f, loc, cls in zip(feats, self.loc, self.cls):
            locs.append(loc(f).permute(0, 2, 3, 1).contiguous().view(f.size(0), -1, 4))
            confs.append(cls(f).permute(0, 2, 3, 1).contiguous().view(f.size(0), -1, 2))
        return torch.cat(locs, dim=1), F.softmax(torch.cat(confs, dim=1), dim=-1)


# ------------------------------------------------------------------------------------- 4. misc ops
class MiscOps(nn.Module):
    """ConvTranspose, PReLU, LeakyReLU, HardSwish, Sigmoid and bilinear Resize in one small net."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.prelu = nn.PReLU(8)
        self.enc2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.leaky = nn.LeakyReLU(0.1)
        self.dec1 = nn.ConvTranspose2d(16, 8, 4, 2, 1)  # x2
        self.hswish = nn.Hardswish()
        self.mid = nn.Conv2d(16, 8, 3, 1, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.prelu(self.enc1(x))  # /2
        e2 = self.leaky(self.enc2(e1))  # /4
        d1 = self.hswish(self.dec1(e2))  # /2
        y = self.mid(torch.cat([d1, e1], dim=1))
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)  # /1
        return torch.sigmoid(self.head(y))


# ------------------------------------------------------------------------------------------ export
# (file, model class, seed, input shape, opset, extra torch.onnx.export arguments, output names)
EXPORTS = [
    ("yolox_nano_like.onnx", YoloxNanoLike, 1, (1, 3, 64, 64), 11, {}, ["output"]),
    # PyTorch 1.2 had no ONNX shape inference in its exporter (it came with 1.8), so x.size(0) stayed a
    # Shape->Gather chain; torch 2.x's own exporter function takes the switch (onnx_shape_inference)
    ("mbv2_opset9_pt12.onnx", MobileNetV2Like, 2, (1, 3, 64, 64), 9,
     {"keep_initializers_as_inputs": True, "do_constant_folding": False, "onnx_shape_inference": False},
     ["logits"]),
    ("mask_ssd_like.onnx", MaskSSDLike, 3, (1, 3, 128, 128), 11, {}, ["loc", "conf"]),
    ("misc_ops.onnx", MiscOps, 4, (1, 3, 32, 32), 14, {}, ["mask"]),
]


def export(cls, seed: int, shape, opset: int, extra: dict, outputs: list[str]) -> bytes:
    torch.manual_seed(seed)  # the modules' own init, overwritten below
    net = cls()
    with torch.no_grad():
        make_trained_looking(net, shape, torch.Generator().manual_seed(seed))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        if "onnx_shape_inference" in extra:  # the TorchScript exporter's function itself (dynamo=False)
            from torch.onnx._internal.torchscript_exporter.utils import _export

            _export(net, (torch.zeros(shape),), buf, opset_version=opset, input_names=["input"],
                    output_names=outputs, **extra)
        else:
            torch.onnx.export(net, (torch.zeros(shape),), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=outputs, **extra)
    m = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(m)
    return buf.getvalue()


def main() -> None:
    for name, cls, seed, shape, opset, extra, outputs in EXPORTS:
        data = export(cls, seed, shape, opset, extra, outputs)
        (HERE / name).write_bytes(data)
        m = onnx.load_from_string(data)
        ops = sorted({n.op_type for n in m.graph.node})
        print(f"{name}: {len(data)} bytes, opset {m.opset_import[0].version}, {len(m.graph.node)} nodes, "
              f"{len(m.graph.input)} graph inputs; ops: {', '.join(ops)}")


if __name__ == "__main__":
    main()
