"""Darknet cfg + weights -> ONNX, with numpy and the onnx helper only (no torch on the box).

Batch norm is folded into the convolutions, so the graph is just Conv/LeakyRelu/MaxPool/Resize/Concat.
The [yolo] layers are not decoded in the graph: their raw maps are the outputs and the anchors, strides
and class names travel as metadata, so the same numpy decoder serves every input size.
Supports the layer types of YOLOv3 and YOLOv3-tiny (convolutional, maxpool, upsample, route, shortcut,
yolo).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CONVERTER_VERSION = 3  # part of the cache file name: a change here re-converts (3: anchor mask fix)
DARKNET_BN_EPS = 1e-6  # darknet divides by (sqrt(var) + .000001)


class DarknetError(ValueError):
    """The cfg uses something this converter does not support, or the weights do not fit it."""


@dataclass
class Section:
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def get_int(self, key: str, default: int) -> int:
        return int(self.options.get(key, default))

    def get_ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


def parse_cfg(text: str) -> list[Section]:
    """Sections in file order; `[net]` first."""
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append(Section(line.strip("[]").strip()))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError("cfg must start with a [net] section")
    return sections


def read_weights(path: Path) -> np.ndarray:
    """The float32 payload after the header (major, minor, revision, seen)."""
    raw = path.read_bytes()
    major, minor, _ = np.frombuffer(raw[:12], dtype=np.int32)
    header = 12 + (8 if major * 10 + minor >= 2 else 4)
    return np.frombuffer(raw[header:], dtype=np.float32)


@dataclass
class YoloHead:
    """One detection output: which graph output, its anchors (input pixels) and stride."""

    output: str
    anchors: list[list[float]]
    stride: int
    channels: int


class _Builder:
    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights
        self.offset = 0
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def take(self, count: int) -> np.ndarray:
        if self.offset + count > self.weights.size:
            raise DarknetError("weights file is shorter than the cfg needs")
        out = self.weights[self.offset : self.offset + count]
        self.offset += count
        return out

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv(self, idx: int, sec: Section, src: str, in_ch: int) -> tuple[str, int]:
        filters, size = sec.get_int("filters", 1), sec.get_int("size", 1)
        stride, groups = sec.get_int("stride", 1), sec.get_int("groups", 1)
        pad = size // 2 if sec.get_int("pad", 0) else sec.get_int("padding", 0)
        if sec.get_int("batch_normalize", 0):
            bias = self.take(filters)
            scale, mean, var = self.take(filters), self.take(filters), self.take(filters)
        else:
            bias = self.take(filters)
        w = self.take(filters * (in_ch // groups) * size * size).reshape(filters, in_ch // groups, size, size)
        if sec.get_int("batch_normalize", 0):
            factor = scale / (np.sqrt(var) + DARKNET_BN_EPS)
            w = w * factor[:, None, None, None]
            bias = bias - mean * factor
        name = f"conv{idx}"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [
                    src,
                    self.const(f"{name}.w", w.astype(np.float32)),
                    self.const(f"{name}.b", bias.astype(np.float32)),
                ],
                [name],
                kernel_shape=[size, size],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=groups,
            )
        )
        activation = sec.options.get("activation", "linear")
        if activation == "leaky":
            self.nodes.append(helper.make_node("LeakyRelu", [name], [f"{name}.act"], alpha=0.1))
            return f"{name}.act", filters
        if activation != "linear":
            raise DarknetError(f"layer {idx}: activation {activation!r} not supported")
        return name, filters


def convert(
    cfg_path: Path,
    weights_path: Path,
    input_size: int,
    names: list[str],
    yolo_masks: dict[int, list[int]] | None = None,
) -> onnx.ModelProto:
    """Build the ONNX model for a square input of `input_size` (a multiple of 32).

    `yolo_masks` overrides the anchor mask of the n-th [yolo] layer (0-based): a cfg may not match the
    masks its weights were trained with (see registry.MODELS), and the anchors decide the box sizes.
    """
    if input_size % 32:
        raise DarknetError(f"input size {input_size} is not a multiple of 32")
    sections = parse_cfg(cfg_path.read_text(encoding="utf-8"))
    b = _Builder(read_weights(weights_path))
    outputs: list[str] = []  # tensor name per layer
    channels: list[int] = []
    strides: list[int] = []
    heads: list[YoloHead] = []
    src, ch, stride = "images", 3, 1
    for idx, sec in enumerate(sections[1:]):
        if sec.kind == "convolutional":
            src, ch = b.conv(idx, sec, src, ch)
            stride *= sec.get_int("stride", 1)
        elif sec.kind == "maxpool":
            size, step = sec.get_int("size", sec.get_int("stride", 1)), sec.get_int("stride", 1)
            padding = sec.get_int("padding", size - 1)
            begin = padding // 2
            pads = [begin, begin, padding - begin, padding - begin]
            b.nodes.append(
                helper.make_node(
                    "MaxPool", [src], [f"pool{idx}"], kernel_shape=[size] * 2, strides=[step] * 2, pads=pads
                )
            )
            src, stride = f"pool{idx}", stride * step
        elif sec.kind == "upsample":
            factor = sec.get_int("stride", 2)
            scales = b.const(f"up{idx}.scales", np.array([1, 1, factor, factor], dtype=np.float32))
            b.nodes.append(
                helper.make_node(
                    "Resize",
                    [src, "", scales],
                    [f"up{idx}"],
                    mode="nearest",
                    coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor",
                )
            )
            src, stride = f"up{idx}", stride // factor
        elif sec.kind == "route":
            layers = [v if v >= 0 else idx + v for v in sec.get_ints("layers")]
            srcs = [outputs[v] for v in layers]
            ch, stride = sum(channels[v] for v in layers), strides[layers[0]]
            if len(srcs) == 1:
                src = srcs[0]
            else:
                b.nodes.append(helper.make_node("Concat", srcs, [f"route{idx}"], axis=1))
                src = f"route{idx}"
        elif sec.kind == "shortcut":
            other = sec.get_int("from", -3)
            b.nodes.append(helper.make_node("Add", [src, outputs[idx + other]], [f"short{idx}"]))
            src = f"short{idx}"
        elif sec.kind == "yolo":
            pairs = np.array(sec.get_ints("anchors"), dtype=np.float32).reshape(-1, 2)
            mask = (yolo_masks or {}).get(len(heads)) or sec.get_ints("mask")
            if max(mask) >= len(pairs):
                raise DarknetError(f"layer {idx}: anchor mask {mask} outside the {len(pairs)} anchors")
            heads.append(YoloHead(src, pairs[mask].tolist(), stride, ch))
        else:
            raise DarknetError(f"layer {idx}: [{sec.kind}] not supported")
        outputs.append(src)
        channels.append(ch)
        strides.append(stride)
    if b.offset != b.weights.size:
        raise DarknetError(f"{b.weights.size - b.offset} weights left over: cfg and weights do not match")
    graph = helper.make_graph(
        b.nodes,
        "darknet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, input_size, input_size])],
        [
            helper.make_tensor_value_info(
                h.output, TensorProto.FLOAT, [1, h.channels, input_size // h.stride, input_size // h.stride]
            )
            for h in heads
        ],
        b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ioc-darknet2onnx"
    )
    model.ir_version = 8
    meta = {
        "decoder": "darknet",
        "imgsz": json.dumps([input_size, input_size]),
        "names": json.dumps(dict(enumerate(names))),
        "anchors": json.dumps([h.anchors for h in heads]),
        "strides": json.dumps([h.stride for h in heads]),
    }
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model
