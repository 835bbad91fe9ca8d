"""Exact tiled translation: the whole-image result of a generator, in bounded memory.

Translating a huge image as independent tiles is wrong twice over: instance norm would normalise each tile
by its own statistics (brightness and contrast jump from tile to tile), and convolutions near a tile's edge
would see padding instead of the neighbouring pixels (seams). Here the generator's module tree is traced
into a graph of layers that can each compute any rectangle of their output (composite blocks say what they
compute through :mod:`cyclegan.networks.structure`), and the image is run through that graph pass by pass:

* a *statistics pass* computes a norm layer's input tile by tile and accumulates its per-channel sum and
  sum of squares over the whole image (in float64), after which the layer normalises every tile with the
  whole image's statistics;
* a tile is computed from the larger input rectangle its convolutions read (its halo), worked out layer by
  layer from kernel, stride and padding; padding layers pad only where a rectangle meets the image border,
  so every pixel sees exactly what it sees in a whole-image pass;
* activations are kept as whole-image buffers only at 1/4 resolution and below (``STORE_FACTOR``), where a
  branch forks (ResNet block inputs, U-Net skips) or where the resolution starts to rise again; everything
  finer is recomputed from them tile by tile instead of stored. A ResNet block overwrites its input buffer
  with its output, a band of tiles behind, so the bottleneck needs one buffer.

The result equals the whole-image translation up to float rounding (about 1e-6).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cyclegan.errors import CycleGANError, TooLarge
from cyclegan.networks import input_channels
from cyclegan.networks.structure import Chain, Concat, FixedConv, Residual, Structured

STORE_FACTOR = 4
"""Activations downscaled this much or more are small enough to keep whole; finer ones are recomputed."""

ALLOCATOR_CACHE = (3, 64 * 2**20)
"""Memory the C allocator and the backend keep beyond the live tensors: tiled runs free and reallocate
tile-sized tensors thousands of times, and on Linux (glibc, 2 threads) 20-170 MiB stayed held, some 2.5-6
times the largest tile's working set. Estimates add the working set times the factor (tiled runs), and the
bytes (every run)."""

Span = tuple[int, int]
"""Half-open [start, stop) along one axis."""
Region = tuple[Span, Span]
"""Rows and columns of a rectangle, in the coordinates of one layer's output."""
Shape = tuple[int, int, int]
"""Channels, height, width of one layer's whole output."""
Buffers = dict[int, "torch.Tensor | None"]
"""Whole-layer activations by graph node (None in a dry run, which only counts bytes)."""


class _Op:
    """A layer that computes any rectangle of its output from rectangles of its inputs."""

    scale = 1.0  # how many times coarser the output grid is than the input grid

    def size(self, shapes: list[Shape]) -> Shape:
        return shapes[0]

    def need(self, out: Region, shapes: list[Shape]) -> list[Region]:
        """The rectangle of each input that ``out`` depends on, clipped to the input."""
        return [out] * len(shapes)

    def aliases(self, out: Region, shapes: list[Shape], inplace: bool) -> bool:
        """Whether ``run`` returns its first input itself rather than new memory."""
        return False

    def scratch(self, needs: list[Region], out: Region, shapes: list[Shape], out_shape: Shape) -> int:
        """Bytes ``run`` holds briefly besides its output."""
        return 0

    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        raise NotImplementedError


class _Pointwise(_Op):
    def __init__(self, fn: Callable[[torch.Tensor, bool], torch.Tensor] | None) -> None:
        self.fn = fn  # None: the identity

    def aliases(self, out: Region, shapes: list[Shape], inplace: bool) -> bool:
        return inplace or self.fn is None

    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        return xs[0] if self.fn is None else self.fn(xs[0], inplace)


class _Add(_Op):
    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        return xs[0] + xs[1]


class _Cat(_Op):
    def size(self, shapes: list[Shape]) -> Shape:
        return sum(s[0] for s in shapes), shapes[0][1], shapes[0][2]

    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        return torch.cat(xs, 1)


class _Norm(_Op):
    """Instance or batch norm. Norms that use the image's own statistics get them from a statistics pass."""

    def __init__(self, module: nn.InstanceNorm2d | nn.BatchNorm2d) -> None:
        self.module = module
        self.whole_image = module.training or module.running_mean is None
        self.stats = None if self.whole_image else (module.running_mean, module.running_var)

    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        assert self.stats is not None, "statistics pass missing"
        m = self.module
        return F.batch_norm(xs[0], *self.stats, m.weight, m.bias, False, 0.0, m.eps)


def _pair(value: tuple[int, ...] | str) -> tuple[int, int]:
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class _Fixed:
    """A depthwise convolution with a fixed filter (an anti-aliasing layer's ``filt``), in the attributes of a
    conv module that the conv ops read."""

    weight: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int] = (0, 0)
    bias: None = None

    @property
    def groups(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> tuple[int, int]:
        return _pair(self.weight.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.groups

    @property
    def out_channels(self) -> int:
        return self.groups


class _Conv(_Op):
    def __init__(self, module: nn.Conv2d | _Fixed) -> None:
        self.module = module
        self.k, self.s, self.p = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
        self.scale = float(self.s[0])

    def size(self, shapes: list[Shape]) -> Shape:
        (_, h, w), k, s, p = shapes[0], self.k, self.s, self.p
        return self.module.out_channels, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1

    def _window(self, out: Region, axis: int) -> Span:
        """Input rows (axis 0) or columns (axis 1) the conv reads, in zero-padded input coordinates."""
        s, p = self.s[axis], self.p[axis]
        return out[axis][0] * s - p, (out[axis][1] - 1) * s - p + self.k[axis]

    def need(self, out: Region, shapes: list[Shape]) -> list[Region]:
        _, h, w = shapes[0]
        return [(_clip(self._window(out, 0), h), _clip(self._window(out, 1), w))]

    def scratch(self, needs: list[Region], out: Region, shapes: list[Shape], out_shape: Shape) -> int:
        """A padded copy of the input and the backend's copies of input and output in its own layout."""
        padded = (self._window(out, 0), self._window(out, 1))
        return 2 * _nbytes(shapes[0], padded) + _nbytes(out_shape, out)

    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        x, m = xs[0], self.module
        pads: list[int] = []
        for axis in (1, 0):  # F.pad lists the last dimension first
            (w0, w1), (c0, c1) = self._window(out, axis), needs[0][axis]
            pads += [c0 - w0, w1 - c1]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, m.weight, m.bias, self.s, 0, 1, m.groups)


class _ConvTranspose(_Op):
    def __init__(self, module: nn.ConvTranspose2d | _Fixed) -> None:
        self.module = module
        self.k, self.s, self.p = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
        self.extra = _pair(module.output_padding)
        self.scale = 1.0 / self.s[0]

    def size(self, shapes: list[Shape]) -> Shape:
        (_, h, w), k, s, p, e = shapes[0], self.k, self.s, self.p, self.extra
        return (
            self.module.out_channels,
            (h - 1) * s[0] - 2 * p[0] + k[0] + e[0],
            (w - 1) * s[1] - 2 * p[1] + k[1] + e[1],
        )

    def need(self, out: Region, shapes: list[Shape]) -> list[Region]:
        spans = []
        for axis in (0, 1):
            k, s, p, n = self.k[axis], self.s[axis], self.p[axis], shapes[0][1 + axis]
            first = -((k - 1 - p - out[axis][0]) // s)  # ceil((o0 + p - k + 1) / s)
            first = min(max(first, 0), n - 1)
            spans.append((first, max(min((out[axis][1] - 1 + p) // s + 1, n), first + 1)))
        return [(spans[0], spans[1])]

    def scratch(self, needs: list[Region], out: Region, shapes: list[Shape], out_shape: Shape) -> int:
        """The backend's copy of the input and the uncropped output, twice (its layout and ours)."""
        return _nbytes(shapes[0], needs[0]) + 2 * _nbytes(out_shape, out)

    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        x, m = xs[0], self.module
        y = F.conv_transpose2d(x, m.weight, None, self.s, 0, 0, m.groups)
        pads: list[int] = []
        for axis in (1, 0):
            start = needs[0][axis][0] * self.s[axis] - self.p[axis]  # where y's first row lands
            pads += [start - out[axis][0], out[axis][1] - start - y.shape[2 + axis]]
        y = F.pad(y, pads)  # negative amounts crop
        return y if m.bias is None else y.add_(m.bias.view(1, -1, 1, 1))


class _Pad(_Op):
    """Reflection, replication or constant padding, applied only where a rectangle meets the border."""

    def __init__(
        self, module: nn.ReflectionPad2d | nn.ReplicationPad2d | nn.ConstantPad2d, mode: str
    ) -> None:
        self.left, self.right, self.top, self.bottom = (int(v) for v in module.padding)
        self.mode, self.value = mode, float(getattr(module, "value", 0.0))

    def size(self, shapes: list[Shape]) -> Shape:
        c, h, w = shapes[0]
        return c, h + self.top + self.bottom, w + self.left + self.right

    def _sources(self, out: Region, axis: int, n: int) -> tuple[list[int], int, int]:
        """Input rows padded rows ``out`` copy, and how many constant rows come before and after them."""
        before = (self.top, self.left)[axis]
        rows, lead, trail = [], 0, 0
        for i in range(out[axis][0] - before, out[axis][1] - before):
            if 0 <= i < n:
                rows.append(i)
            elif self.mode == "reflect":
                rows.append(-i if i < 0 else 2 * (n - 1) - i)
            elif self.mode == "replicate":
                rows.append(min(max(i, 0), n - 1))
            elif i < 0:
                lead += 1
            else:
                trail += 1
        return rows, lead, trail

    def aliases(self, out: Region, shapes: list[Shape], inplace: bool) -> bool:
        """True where the rectangle lies inside the image: nothing to pad."""
        need = self.need(out, shapes)[0]
        return all(self._sources(out, a, shapes[0][1 + a]) == (list(range(*need[a])), 0, 0) for a in (0, 1))

    def need(self, out: Region, shapes: list[Shape]) -> list[Region]:
        spans = []
        for axis in (0, 1):
            rows = self._sources(out, axis, shapes[0][1 + axis])[0] or [0]
            spans.append((min(rows), max(rows) + 1))
        return [(spans[0], spans[1])]

    def run(
        self, xs: list[torch.Tensor], needs: list[Region], out: Region, shapes: list[Shape], inplace: bool
    ) -> torch.Tensor:
        x = xs[0]
        for axis in (0, 1):
            rows, lead, trail = self._sources(out, axis, shapes[0][1 + axis])
            start, dim = needs[0][axis][0], 2 + axis
            if rows != list(range(start, start + x.shape[dim])):
                x = x.index_select(dim, torch.tensor(rows, device=x.device) - start)
            if lead or trail:
                x = F.pad(x, [0, 0, lead, trail] if axis == 0 else [lead, trail], value=self.value)
        return x


def _clip(span: Span, n: int) -> Span:
    return max(span[0], 0), min(span[1], n)


def _union(a: Region, b: Region) -> Region:
    return (min(a[0][0], b[0][0]), max(a[0][1], b[0][1])), (min(a[1][0], b[1][0]), max(a[1][1], b[1][1]))


def _crop(x: torch.Tensor, have: Region, want: Region) -> torch.Tensor:
    if have == want:
        return x
    (r0, r1), (c0, c1) = want
    return x[:, :, r0 - have[0][0] : r1 - have[0][0], c0 - have[1][0] : c1 - have[1][0]]


def _nbytes(shape: Shape, region: Region | None = None) -> int:
    """Bytes of a float32 activation: the whole layer, or one rectangle of it."""
    (r0, r1), (c0, c1) = region or ((0, shape[1]), (0, shape[2]))
    return shape[0] * (r1 - r0) * (c1 - c0) * 4


def _in_training(module: nn.Module) -> CycleGANError:
    return CycleGANError(
        f"tiled translation needs the generator in eval mode (call .eval()): its {type(module).__name__}"
        " layer behaves differently in training"
    )


def _leaf(module: nn.Module) -> _Op:
    """The op for one layer; layers whose behaviour we do not know are refused, not guessed."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str) or module.dilation != (1, 1):
            raise CycleGANError("tiled translation supports convolutions with zero padding and no dilation")
        return _Conv(module)
    if isinstance(module, nn.ConvTranspose2d):
        if module.dilation != (1, 1):
            raise CycleGANError("tiled translation supports transposed convolutions without dilation")
        return _ConvTranspose(module)
    if isinstance(module, nn.ReflectionPad2d):
        return _Pad(module, "reflect")
    if isinstance(module, nn.ReplicationPad2d):
        return _Pad(module, "replicate")
    if isinstance(module, nn.ConstantPad2d):
        return _Pad(module, "constant")
    if isinstance(module, (nn.InstanceNorm2d, nn.BatchNorm2d)):
        updates_stats = module.training and module.track_running_stats
        if updates_stats or (isinstance(module, nn.BatchNorm2d) and module.training):
            raise _in_training(module)
        return _Norm(module)
    if isinstance(module, nn.ReLU):
        return _Pointwise(lambda x, inplace: F.relu(x, inplace=inplace))
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return _Pointwise(lambda x, inplace: F.leaky_relu(x, slope, inplace=inplace))
    if isinstance(module, nn.Tanh):
        return _Pointwise(lambda x, inplace: x.tanh_() if inplace else x.tanh())
    if isinstance(module, nn.Dropout):
        if module.training and module.p > 0:
            raise _in_training(module)
        return _Pointwise(None)
    if isinstance(module, nn.Identity):
        return _Pointwise(None)
    raise CycleGANError(f"tiled translation does not support {type(module).__name__} layers")


@dataclass
class _Graph:
    """The generator as a list of ops in execution order; node 0 is the input image."""

    ops: list[_Op | None] = field(default_factory=lambda: [None])
    inputs: list[tuple[int, ...]] = field(default_factory=lambda: [()])
    factors: list[float] = field(default_factory=lambda: [1.0])

    def add(self, op: _Op, *inputs: int) -> int:
        self.ops.append(op)
        self.inputs.append(inputs)
        self.factors.append(self.factors[inputs[0]] * op.scale)
        return len(self.ops) - 1

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: the largest downscaling inside the network."""
        return round(max(self.factors))

    def shapes(self, shape: Shape) -> list[Shape]:
        shapes = [shape]
        for op, inputs in zip(self.ops[1:], self.inputs[1:], strict=True):
            shapes.append(op.size([shapes[i] for i in inputs]))  # type: ignore[union-attr]
        return shapes


def _trace(module: nn.Module | FixedConv, x: int, graph: _Graph) -> int:
    """Add ``module`` to the graph with input node ``x``; returns its output node. Composite blocks say what
    they are (:mod:`cyclegan.networks.structure`); every other layer must be one :func:`_leaf` knows."""
    if isinstance(module, FixedConv):
        fixed = _Fixed(module.filt, _pair((module.stride,) * 2), _pair((module.padding,) * 2))
        return graph.add(_ConvTranspose(fixed) if module.transposed else _Conv(fixed), x)
    if isinstance(module, nn.Sequential):
        return _trace_chain(module, x, graph)
    if not isinstance(module, Structured):
        return graph.add(_leaf(module), x)
    structure = module.structure()
    if isinstance(structure, Chain):
        return _trace_chain(structure.layers, x, graph)
    if isinstance(structure, Residual):
        return graph.add(_Add(), *_branch(structure.body, x, graph))
    assert isinstance(structure, Concat)
    return graph.add(_Cat(), *_branch(structure.body, x, graph))


def _trace_chain(layers: Iterable[nn.Module | FixedConv], x: int, graph: _Graph) -> int:
    for layer in layers:
        x = _trace(layer, x, graph)
    return x


def _branch(layers: nn.Sequential, x: int, graph: _Graph) -> tuple[int, int]:
    """A block's input as its skip connection sees it, and the output of the block's branch.

    An in-place activation at the start of the branch (the U-Net's ``LeakyReLU(0.2, True)``) overwrites the
    block input before ``torch.cat`` reads it, so the skip carries the activated input.
    """
    rest = list(layers)
    while rest and getattr(rest[0], "inplace", False):
        x = _trace(rest.pop(0), x, graph)
    out = x
    for layer in rest:
        out = _trace(layer, out, graph)
    return x, out


def _graph(generator: nn.Module) -> _Graph:
    graph = _Graph()
    _trace(generator, 0, graph)
    return graph


class _Net:
    """The traced generator at one image size: computes rectangles of any layer from stored buffers."""

    def __init__(self, generator: nn.Module, shape: Shape) -> None:
        self.graph = _graph(generator)
        m = self.graph.multiple
        if shape[1] % m or shape[2] % m:
            raise CycleGANError(
                f"tiled translation needs image sides that are multiples of {m}, got {shape[2]}x{shape[1]}"
                " (Translator pads them)"
            )
        self.shapes = self.graph.shapes(shape)
        self.last = len(self.shapes) - 1

    def plan(self, target: int, region: Region, buffers: Buffers) -> dict[int, Region]:
        """The rectangle of every layer that ``region`` of ``target`` needs, back to the stored buffers."""
        plan = {target: region}
        for n in range(target, 0, -1):
            if n not in plan or n in buffers:
                continue
            inputs = self.graph.inputs[n]
            needs = self.graph.ops[n].need(plan[n], [self.shapes[i] for i in inputs])  # type: ignore[union-attr]
            for i, r in zip(inputs, needs, strict=True):
                plan[i] = _union(plan[i], r) if i in plan else r
        return plan

    def execute(
        self, plan: dict[int, Region], buffers: Buffers, dry: bool = False
    ) -> tuple[torch.Tensor | None, int]:
        """Compute the planned rectangles in order, freeing each after its last use; returns the last one
        and the peak bytes held. Only an activation's last user may overwrite it, and never a stored one.
        ``dry`` computes nothing and only counts the bytes, for the memory estimate."""
        g = self.graph
        uses = Counter(i for n in plan if n not in buffers for i in g.inputs[n])
        values: dict[int, torch.Tensor | None] = {}
        owned: dict[int, bool] = {}
        held: dict[int, int] = {}
        live = peak = 0
        for n in sorted(plan):
            if n in buffers:
                whole = ((0, self.shapes[n][1]), (0, self.shapes[n][2]))
                values[n] = None if dry else _crop(buffers[n], whole, plan[n])  # type: ignore[arg-type]
                owned[n], held[n] = False, 0
                continue
            op, inputs = g.ops[n], g.inputs[n]
            assert op is not None
            shapes = [self.shapes[i] for i in inputs]
            needs = op.need(plan[n], shapes)
            for i in inputs:
                uses[i] -= 1
            inplace = owned[inputs[0]] and uses[inputs[0]] == 0
            if dry:
                values[n], alias = None, op.aliases(plan[n], shapes, inplace)
            else:
                xs = [_crop(values[i], plan[i], r) for i, r in zip(inputs, needs, strict=True)]  # type: ignore[arg-type]
                values[n] = op.run(xs, needs, plan[n], shapes, inplace)
                alias = values[n] is xs[0]
            owned[n] = not alias or (owned[inputs[0]] and uses[inputs[0]] == 0)
            held[n] = 0 if alias else _nbytes(self.shapes[n], plan[n])
            live += held[n]
            peak = max(peak, live + op.scratch(needs, plan[n], shapes, self.shapes[n]))
            for i in set(inputs):
                if uses[i] == 0:
                    del values[i]
                    if alias and i == inputs[0]:
                        held[n] += held[i]  # the output lives on in its input's memory
                    else:
                        live -= held[i]
        return values[max(plan)], peak

    def whole_image_bytes(self) -> int:
        """Tensor bytes a plain whole-image forward holds at its peak, input included."""
        _, h, w = self.shapes[self.last]
        plan = self.plan(self.last, ((0, h), (0, w)), {0: None})
        return _nbytes(self.shapes[0]) + self.execute(plan, {0: None}, dry=True)[1]


@dataclass
class _Pass:
    """One sweep over the tiles of ``target``: gathering a norm's statistics, or storing the target whole."""

    target: int
    norm: int | None
    sources: set[int]
    frees: list[int] = field(default_factory=list)
    recycle: int | None = None  # a source buffer that dies in this pass and is overwritten by the target


class _Schedule:
    """The passes that translate one image size with one tile size, and the buffers they keep."""

    def __init__(self, generator: nn.Module, shape: Shape, tile: int) -> None:
        check_tile(generator, tile)
        self.net, self.tile = _Net(generator, shape), tile
        graph, shapes = self.net.graph, self.net.shapes
        consumers: list[list[int]] = [[] for _ in graph.ops]
        for n, inputs in enumerate(graph.inputs):
            for i in inputs:
                consumers[i].append(n)
        stored = {
            n
            for n, f in enumerate(graph.factors)
            if f >= STORE_FACTOR
            and (len(consumers[n]) > 1 or any(graph.factors[c] < STORE_FACTOR for c in consumers[n]))
        }
        self.passes: list[_Pass] = []
        done = {0}
        for n, op in enumerate(graph.ops):
            if isinstance(op, _Norm) and op.whole_image:
                source = graph.inputs[n][0]
                self.passes.append(_Pass(source, n, self._sources(source, done)))
            if n in stored or n == self.net.last:
                self.passes.append(_Pass(n, None, self._sources(n, done)))
                done.add(n)
        last_use = {s: k for k, p in enumerate(self.passes) for s in p.sources}
        for k, p in enumerate(self.passes):
            p.frees = [s for s in p.sources if last_use[s] == k and s != 0]
            same = [s for s in p.frees if shapes[s] == shapes[p.target]]
            p.recycle = same[0] if same and p.norm is None else None

    def _sources(self, target: int, done: set[int]) -> set[int]:
        """The stored activations a pass reads: what ``target`` depends on, up to the nearest stored ones."""
        found, seen, stack = set(), set(), [target]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in done:
                found.add(n)
            else:
                stack.extend(self.net.graph.inputs[n])
        return found

    def _bands(self, target: int) -> list[list[Region]]:
        """Rows of tiles covering ``target``; a tile's side shrinks with its layer's resolution."""
        _, h, w = self.net.shapes[target]
        t = max(1, round(self.tile / self.net.graph.factors[target]))
        return [[((r, min(r + t, h)), (c, min(c + t, w))) for c in range(0, w, t)] for r in range(0, h, t)]

    def _tile(self, target: int, region: Region, buffers: Buffers) -> torch.Tensor:
        y = self.net.execute(self.net.plan(target, region, buffers), buffers)[0]
        assert y is not None
        return y

    def run(self, x: torch.Tensor) -> torch.Tensor:
        buffers: Buffers = {0: x}
        for p in self.passes:
            if p.norm is None:
                self._store(p, buffers)
            else:
                self._gather_stats(p, buffers)
            for s in p.frees:
                del buffers[s]
        y = buffers[self.net.last]
        assert y is not None
        return y

    def _gather_stats(self, p: _Pass, buffers: Buffers) -> None:
        """Per-channel mean and variance of the norm's input over the whole image, summed in float64
        around the first tile's mean so that a large mean cannot cancel the variance away."""
        c, h, w = self.net.shapes[p.target]
        shift: torch.Tensor | None = None
        s1 = s2 = torch.zeros(c, dtype=torch.float64, device=buffers[0].device)  # type: ignore[union-attr]
        for band in self._bands(p.target):
            for region in band:
                y = self._tile(p.target, region, buffers)
                if shift is None:
                    shift = y.mean((0, 2, 3), keepdim=True)
                d = y - shift
                s1 = s1 + d.sum((0, 2, 3), dtype=torch.float64)
                s2 = s2 + d.square().sum((0, 2, 3), dtype=torch.float64)
        assert shift is not None
        m1 = s1 / (h * w)
        mean, var = shift.flatten().double() + m1, (s2 / (h * w) - m1.square()).clamp_min(0)
        norm = self.net.graph.ops[p.norm or 0]
        assert isinstance(norm, _Norm)
        norm.stats = (mean.to(shift.dtype), var.to(shift.dtype))

    def _store(self, p: _Pass, buffers: Buffers) -> None:
        """Compute ``p.target`` whole. Overwriting a dying source in place, a band's tiles are written only
        once no later band reads the rows they replace."""
        source = buffers[0] if p.recycle is None else buffers[p.recycle]
        assert source is not None
        out = source if p.recycle is not None else source.new_empty((1, *self.net.shapes[p.target]))
        release = self._release(p, buffers)
        pending: list[tuple[int, Region, torch.Tensor]] = []
        for b, band in enumerate(self._bands(p.target)):
            for region in band:
                pending.append((release[b], region, self._tile(p.target, region, buffers)))
                if p.recycle is None:
                    _write(out, *pending.pop()[1:])
            for last_reader, region, y in pending:
                if last_reader <= b:
                    _write(out, region, y)
            pending = [e for e in pending if e[0] > b]
        buffers[p.target] = out

    def _release(self, p: _Pass, buffers: Buffers) -> list[int]:
        """For each band, the last band that reads the rows it overwrites in place."""
        bands = [band[0] for band in self._bands(p.target)]
        if p.recycle is None:
            return list(range(len(bands)))
        reads = [self.net.plan(p.target, region, buffers)[p.recycle][0] for region in bands]
        return [
            max([b] + [k for k, (s0, s1) in enumerate(reads) if s0 < region[0][1] and s1 > region[0][0]])
            for b, region in enumerate(bands)
        ]

    def peak_bytes(self) -> int:
        """Bytes held at the peak of ``run``: the schedule replayed on shapes alone, the middle tile of each
        pass standing for all of its tiles, plus what the allocator keeps of freed tile memory."""
        shapes = self.net.shapes
        buffers: Buffers = {0: None}
        live, peak, largest_tile = _nbytes(shapes[0]), 0, 0
        for p in self.passes:
            bands = self._bands(p.target)
            region = bands[len(bands) // 2][len(bands[0]) // 2]
            tile_peak = self.net.execute(self.net.plan(p.target, region, buffers), buffers, dry=True)[1]
            largest_tile = max(largest_tile, tile_peak)
            new = extra = 0
            if p.norm is not None:
                extra = 2 * _nbytes(shapes[p.target], region)  # the centred tile and its square
            elif p.recycle is not None:
                lag = max(r - b for b, r in enumerate(self._release(p, buffers)))
                extra = (lag + 1) * len(bands[0]) * _nbytes(shapes[p.target], region)  # awaiting writing
            else:
                new = _nbytes(shapes[p.target])
            peak = max(peak, live + new + extra + tile_peak)
            live += new
            if p.norm is None:
                buffers[p.target] = None
            for s in p.frees:
                live -= 0 if s == p.recycle else _nbytes(shapes[s])
                del buffers[s]
        return peak + ALLOCATOR_CACHE[0] * largest_tile


def _write(out: torch.Tensor, region: Region, y: torch.Tensor) -> None:
    (r0, r1), (c0, c1) = region
    out[:, :, r0:r1, c0:c1] = y


MIN_AUTO_TILE = 64
"""``choose_tile`` goes no smaller: below this, halos cost more time than the tiles save memory."""


def check_tile(generator: nn.Module, tile: int | None = None) -> None:
    """Refuse, in one line, a generator that cannot be tiled, or a tile size it cannot be tiled with."""
    m = _graph(generator).multiple
    if tile is None:
        return
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < m or tile % m:
        raise CycleGANError(f"tile must be a positive multiple of {m} for this generator, got {tile}")


@torch.inference_mode()
def translate_tiled(generator: nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor:
    """The generator's output for one 1×C×H×W image, computed in ``tile``-pixel tiles.

    Equals ``generator(x)`` up to float rounding, including instance norm's whole-image statistics.
    H and W must be multiples of the generator's size multiple (4 for ResNets, 128 or 256 for U-Nets), as
    ``Translator`` pads them; ``tile`` must be a multiple of it too. The generator must be in eval mode
    where that matters (dropout, batch norm). Supports the layers of this package's ResNet and U-Net
    generators with any norm and padding; other layer types raise CycleGANError.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise CycleGANError(f"translate_tiled takes one 1xCxHxW image, got shape {tuple(x.shape)}")
    return _Schedule(generator, (x.shape[1], x.shape[2], x.shape[3]), tile).run(x)


def estimate_memory(generator: nn.Module, height: int, width: int, tile: int | None = None) -> int:
    """Bytes a translation of a height×width image adds at its peak, counting the input: activations,
    stored buffers, output and convolution scratch, but not the weights nor the process itself (Python and
    PyTorch, about 0.5 GiB on CPU).

    Derived from the layer shapes (``tile=None``: a plain whole-image forward) for float32 tensors, plus
    ``ALLOCATOR_CACHE``. Against the peak resident memory ``benchmarks/tiling.py`` measured
    on CPU (ResNet-9, ngf 16-64, 1024-4096 px) it came out 15-20% above for whole images and 8-35% above
    for tiled runs: a safe side for ``choose_tile``.
    """
    shape = _padded_shape(generator, height, width)
    if tile is None:
        return _Net(generator, shape).whole_image_bytes() + ALLOCATOR_CACHE[1]
    return _Schedule(generator, shape, tile).peak_bytes() + ALLOCATOR_CACHE[1]


def images_that_fit(generator: nn.Module, height: int, width: int, max_memory_bytes: int, batch: int) -> int:
    """How many height×width images, at most ``batch``, one whole-image forward may take within
    ``max_memory_bytes`` (as ``estimate_memory`` counts them: activations grow with the images of a batch);
    0 when not even one fits whole."""
    per_image = _Net(generator, _padded_shape(generator, height, width)).whole_image_bytes()
    return max(0, min(batch, (max_memory_bytes - ALLOCATOR_CACHE[1]) // per_image))


def _padded_shape(generator: nn.Module, height: int, width: int) -> Shape:
    m = _graph(generator).multiple
    return input_channels(generator), -(-height // m) * m, -(-width // m) * m


def choose_tile(generator: nn.Module, height: int, width: int, max_memory_bytes: int) -> int | None:
    """None when a whole-image forward fits ``max_memory_bytes`` (as ``estimate_memory`` counts it), else
    the largest tile, a power-of-two multiple of the size multiple of at least ``MIN_AUTO_TILE``, whose
    estimated peak fits."""
    if estimate_memory(generator, height, width) <= max_memory_bytes:
        return None
    tiles = [max(_graph(generator).multiple, MIN_AUTO_TILE)]
    while tiles[-1] < max(height, width):
        tiles.append(tiles[-1] * 2)
    for tile in reversed(tiles):
        if estimate_memory(generator, height, width, tile) <= max_memory_bytes:
            return tile
    need = estimate_memory(generator, height, width, tiles[0])
    raise TooLarge(
        f"translating a {width}x{height} image needs about {_mib(need)} even in {tiles[0]}-pixel tiles;"
        f" the memory limit is {_mib(max_memory_bytes)}"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.{0 if n >= 2**30 else 2}f} MiB"
