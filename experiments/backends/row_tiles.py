"""Linear layers whose result for a row never depends on the other rows.

A CPU matrix multiply picks its kernel (and so its order of summation) by
the shapes it is given: measured here with torch 2.13, ``x[:1] @ W`` differs
in the last bits from ``(x[:M] @ W)[:1]`` for every M from 2 to 64 in float32,
and in bfloat16 for the vocabulary-sized output layer from M = 33; reductions
over the vocabulary (log-sum-exp) also differed by batch. One bit is enough for a sampled story to take another
token, so a story would depend on how many others shared its batch.

For a *fixed* number of rows, the same measurements show a row's result does
not depend on its position or on the other rows' values. So every linear
layer here multiplies in tiles of exactly ``ROWS_PER_TILE`` rows, padding the
last tile with zeros: the kernel sees one shape whatever the batch size, and
each row's numbers are the row's alone. Everything else in a decoder layer
(norms, rotary positions, attention over a row's own cache) already works row
by row.

16 rows is a choice, not a tuned optimum: a batch of one pays for 16 rows per
step, and the generation benchmark shows what the tiles cost at batch 64.
"""

from __future__ import annotations

import types

ROWS_PER_TILE = 16


def tile_linear_layers(model, rows: int = ROWS_PER_TILE) -> int:
    """Make every ``nn.Linear`` of ``model`` compute in tiles of ``rows`` rows; returns how many were changed."""
    import torch

    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(_tiled_forward, module)
            module.rows_per_tile = rows
            changed += 1
    return changed


def _tiled_forward(self, inputs):
    import torch
    import torch.nn.functional as F

    rows = self.rows_per_tile
    flat = inputs.reshape(-1, inputs.shape[-1])
    count = flat.shape[0]
    padded = -(-count // rows) * rows
    if padded != count:
        flat = torch.cat([flat, flat.new_zeros(padded - count, flat.shape[1])])
    tiles = [F.linear(flat[start:start + rows], self.weight, self.bias) for start in range(0, padded, rows)]
    out = tiles[0] if len(tiles) == 1 else torch.cat(tiles)
    return out[:count].reshape(*inputs.shape[:-1], out.shape[-1])


def map_row_tiles(fn, *tensors):
    """``fn`` applied to tiles of exactly ``ROWS_PER_TILE`` rows of ``tensors`` (None passes through), results joined.

    The last tile is padded by repeating its first row (a real row, so no
    NaNs from empty inputs); the padding rows' results are dropped.
    """
    import torch

    count = next(t for t in tensors if t is not None).shape[0]
    outputs = []
    for start in range(0, count, ROWS_PER_TILE):
        stop = min(start + ROWS_PER_TILE, count)
        tile = [None if t is None else _pad_rows(t[start:stop], ROWS_PER_TILE) for t in tensors]
        result = fn(*tile)
        outputs.append(tuple(part[:stop - start] for part in result))
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def _pad_rows(tensor, rows: int):
    import torch

    missing = rows - tensor.shape[0]
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor[:1].expand(missing, *tensor.shape[1:])])
