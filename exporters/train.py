"""Fine-tuning of the item vectors and the ranker on one data set, with a time split.

Stages (see ``run`` for the whole job):

1. item vectors (``exporters.item_training``): contrastive fine-tuning of the encoder's top
   layers and of per-item / per-category vectors on co-visitation pairs of training events;
2. ranker: examples "as the protocol tests" (``exporters.trainset``), softmax over the whole
   catalog (one user vector, one matmul with all item vectors, features for all items built
   from sparse rows) — or, for a catalog larger than ``full_softmax_max_items``, over a sampled
   candidate set of fixed size (``sampled_softmax_candidates``), so that a step's cost does not
   grow with the catalog — with the item id/category vectors trained jointly; early stopping on
   validation NDCG@10 (full ranking, the protocol's first mode); the best state is checkpointed
   and restored.

Causal next-item objective (``next_item_weight``, SASRec-style): the ranker attends causally
(``Ranker.causal``), so its state at every position of an example's sequence is the user vector of
that prefix; each prefix is trained to put the sequence's next item first among all items (or the
sampled candidates, with the same logQ correction), with logits = learned scale x cosine. One
example then gives up to ``max_seq_len`` training signals instead of one, for one transformer pass
(the extra cost is one [B, L, C] matmul). The example's own target keeps the feature-aware loss.

Sampled softmax: the batch's targets and the batch users' own items are always candidates; the
other ``sampled_negatives`` are drawn with replacement from ``popularity_share`` x training
popularity + the rest uniform over the catalog, and each sampled column's logit is corrected by
``-log P(column in the set)`` (logQ correction, Bengio & Senecal; Yi et al. 2019), so the sampled
loss estimates the full softmax. Only the candidate and sequence rows of the item tower are
computed with gradients; the no-grad vector table used for the ``embedding_sim`` feature is
refreshed every ``tower_refresh_steps`` steps (a full catalog pass amortised over many steps).

Budget for large logs (one rule, every data set): each epoch trains on a fresh seeded sample of at
most ``examples_per_epoch`` examples (all of them when there are fewer), and early stopping reads
validation NDCG@10 on a seeded sample of at most ``val_cases`` validation cases (all when fewer).

Determinism: one seed drives numpy, torch and the example order. CUDA is used when present.
Distributed data parallel: start with ``torchrun --nproc_per_node=G -m exporters.cli train
...`` (NCCL on GPUs, gloo on CPU); every rank trains on its share of each epoch's examples
(gradients all-reduced by ``DistributedDataParallel``), rank 0 validates, decides early stopping
for all, and alone evaluates, exports and publishes. ``batch_size`` is the global batch (each rank
takes ``batch_size // G`` of it: the same steps on the same examples as one process; raise it to
keep G GPUs busy).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from exporters.dataset import Interactions, Split
from exporters.evaluate import case_ndcg
from exporters.features import PointSet
from exporters.item_training import ItemTower
from exporters.modeling import Ranker
from exporters.trainset import Examples

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 60.0  # a progress line (step, loss, examples/s) this often, terminal or not


@dataclass
class RankerTrainConfig:
    epochs: int = 3
    patience: int = 1
    batch_size: int = 64
    lr_bert: float = 5e-5
    lr_head: float = 2e-3
    lr_items: float = 1e-3  # 0 freezes the item vectors during ranker training
    weight_decay: float = 0.0
    aux_target_weight: float = 0.25  # weight of the target's basket mates (the target has 1)
    full_softmax_max_items: int = 4096  # larger catalogs: sampled softmax (see the module docstring)
    sampled_negatives: int = 4096
    popularity_share: float = 0.5  # share of the sampled negatives drawn by training popularity
    tower_refresh_steps: int = 50  # sampled softmax: steps between refreshes of the no-grad vector table
    seed: int = 0
    max_examples: int | None = None  # cap (tests, quick runs)
    examples_per_epoch: int | None = 20_000  # budget: a fresh seeded sample per epoch when there are more (None: all)
    val_cases: int | None = 2_000  # budget: early stopping on a seeded sample of validation cases (None: all)
    head_k: int = (
        0  # >0: softmax over each example's current top head_k items plus its targets (a loss for the top of the list)
    )
    val_every: int = 0  # also validate (and checkpoint if better) every N steps inside an epoch; 0: epoch ends only
    causal: bool = True  # causal attention in the ranker (needed by the next-item objective)
    next_item_weight: float = 1.0  # weight of the causal next-item loss over every prefix (0: off)
    next_item_positions: int | None = None  # next-item loss on the newest N prefixes only (None: every prefix)
    # Hard bound on the ranker's wall time (s, from its start, checkpoint-0 validation included):
    # training stops after the step that crosses it, and that point is validated like an epoch end.
    # None: no bound (the work is bounded by epochs x examples_per_epoch, the time is not).
    time_budget_s: float | None = None


@dataclass
class EpochLog:
    epoch: float  # fractional for checks inside an epoch (val_every)
    loss: float
    val_ndcg: float
    seconds: float


@dataclass
class RankerTrainResult:
    history: list[EpochLog] = field(default_factory=list)
    initial_val_ndcg: float = 0.0  # before any ranker step (epoch 0; kept if no epoch beats it)
    best_epoch: float = 0  # fractional when the best check was inside an epoch
    best_val_ndcg: float = float("-inf")


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def distributed_context() -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class TrainStep(nn.Module):
    """Ranker + item tower as one module, so DistributedDataParallel sees one forward."""

    def __init__(self, ranker: Ranker, tower: ItemTower, next_item_scale: float = 10.0):
        super().__init__()
        self.ranker = ranker
        self.tower = tower
        # Temperature of the causal next-item logits (cosine x scale), learned; training only
        # (not part of the exported ranker, whose taste term is the bilinear form).
        self.log_next_scale = nn.Parameter(torch.tensor(float(np.log(next_item_scale))))

    def forward(
        self,
        seq_rows: torch.Tensor,
        seq_types: torch.Tensor,
        feats: torch.Tensor,
        cand_rows: torch.Tensor | None,
        next_item: bool = False,
        next_positions: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores [B, C] of the candidates (the catalog when ``cand_rows`` is None); with
        ``next_item`` (causal ranker) also the next-item logits of every prefix [B, L, C]:
        scale x cos(user vector of the prefix, candidate); with ``next_positions`` = N only those
        of the newest N prefixes that have a next item in the sequence [B, N, C] (columns
        L-1-N .. L-2: sequences are right-aligned)."""
        mask = (seq_rows >= 0).long()
        if cand_rows is None:
            vecs = self.tower()
            seq_vecs, cands = vecs[seq_rows.clamp(min=0)], vecs
        else:  # only the rows this batch reads: the cost does not grow with the catalog
            rows, inv = torch.unique(torch.cat([cand_rows, seq_rows.clamp(min=0).flatten()]), return_inverse=True)
            vecs = self.tower(rows)
            cands, seq_vecs = vecs[inv[: len(cand_rows)]], vecs[inv[len(cand_rows) :]].view(*seq_rows.shape, -1)
        seq_vecs = seq_vecs * mask.unsqueeze(-1).to(vecs.dtype)
        if not next_item:
            user = self.ranker.user_vector(seq_vecs, seq_types, mask)
            return self.ranker.score_catalog(user, cands, feats)
        states = self.ranker.user_states(seq_vecs, seq_types, mask)
        user = self.ranker.newest(states, mask)
        if next_positions is not None:
            states = states[:, _newest_prefixes(states.shape[1], next_positions)]
        prefix = F.normalize(states, dim=-1) * self.log_next_scale.exp()
        return self.ranker.score_catalog(user, cands, feats), prefix @ cands.T


def _newest_prefixes(length: int, n: int) -> slice:
    """Columns of the newest ``n`` prefixes that have a next item inside a right-aligned sequence."""
    return slice(max(length - 1 - n, 0), length - 1)


def next_item_targets(seq_rows: np.ndarray, cand_pos: dict[int, int] | None) -> np.ndarray:
    """Causal objective's targets [B, L]: at each position the column of the sequence's next item
    (-100, ignored, where this or the next position is padding, and at the newest position, whose
    next item is the example's own target)."""
    nxt = np.full(seq_rows.shape, -100, dtype=np.int64)
    real = (seq_rows[:, :-1] >= 0) & (seq_rows[:, 1:] >= 0)
    following = seq_rows[:, 1:]
    if cand_pos is None:
        cols = following
    else:
        cols = np.vectorize(lambda r: cand_pos.get(int(r), -100), otypes=[np.int64])(following)
    nxt[:, :-1] = np.where(real, cols, -100)
    return nxt


def next_item_loss(seq_logits: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
    """Mean cross-entropy of the next item over every real (prefix, next) pair of the batch."""
    t = torch.from_numpy(targets).to(seq_logits.device)
    if not (t >= 0).any():
        return seq_logits.sum() * 0.0
    return F.cross_entropy(seq_logits.reshape(-1, seq_logits.shape[-1]), t.reshape(-1), ignore_index=-100)


def _batch_inputs(
    points: PointSet, idx: np.ndarray, vecs: np.ndarray, device: torch.device, items: np.ndarray | None = None
):
    feats = torch.from_numpy(points.features(idx, vecs, items)).to(device)
    return torch.from_numpy(points.seq_items[idx]).to(device), torch.from_numpy(points.seq_types[idx]).to(device), feats


def model_scorer(step: TrainStep, points: PointSet, device: torch.device, chunk: int = 64):
    """Scorer for ``exporters.evaluate``: full-catalog scores of the given points."""

    @torch.inference_mode()
    def score(cases: np.ndarray) -> np.ndarray:
        step.eval()
        vecs_t = step.tower()
        vecs = vecs_t.float().cpu().numpy()
        out = []
        n = vecs.shape[0]
        sub = max(1, min(chunk, 2_000_000 // max(n, 1)))
        for s in range(0, len(cases), sub):
            idx = cases[s : s + sub]
            seq_rows, seq_types, feats = _batch_inputs(points, idx, vecs, device)
            out.append(step(seq_rows, seq_types, feats, None).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, n), dtype=np.float32)

    return score


def head_mask(logits: torch.Tensor, targets: list[np.ndarray], cand_pos: dict[int, int] | None, k: int) -> torch.Tensor:
    """Additive mask [B, C]: 0 on each row's current top ``k`` columns and its target columns,
    -inf elsewhere, so the softmax only orders the head of the list (NDCG@10 never sees the tail)."""
    k = min(k, logits.shape[1])
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(1, logits.detach().topk(k, dim=1).indices, True)
    for r, t in enumerate(targets):
        cols = [cand_pos[i] for i in t] if cand_pos is not None else list(t)
        keep[r, cols] = True
    return torch.zeros_like(logits).masked_fill(~keep, float("-inf"))


class NegativeSampler:
    """Sampled-softmax candidates: forced rows (targets, own items) plus ``k`` draws with replacement
    from ``share`` x popularity + (1 - share) x uniform, with each column's logQ correction."""

    def __init__(self, popularity: np.ndarray, k: int, share: float):
        n = len(popularity)
        pop = popularity / popularity.sum() if popularity.sum() > 0 else np.full(n, 1.0 / n)
        self.k, self.n_pop = k, int(round(k * share))
        self.cdf = np.cumsum(pop)
        self.cdf[-1] = 1.0
        self.q = self.n_pop * pop + (k - self.n_pop) / n  # expected draws per item
        self.n = n

    def sample(self, rng: np.random.Generator, forced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidate rows, additive logit correction per candidate: 0 for forced rows)."""
        drawn = np.concatenate(
            [
                np.searchsorted(self.cdf, rng.random(self.n_pop), side="right"),
                rng.integers(0, self.n, self.k - self.n_pop),
            ]
        ).clip(max=self.n - 1)
        cands = np.unique(np.concatenate([forced, drawn]))
        # P(row in the set) for k independent draws ~= 1 - exp(-expected draws).
        p_in = -np.expm1(-self.q[cands])
        corr = np.where(np.isin(cands, forced), 0.0, np.log(np.maximum(p_in, 1e-12)))
        return cands, -corr.astype(np.float32)


def _loss(
    logits: torch.Tensor,
    targets: list[np.ndarray],
    cand_pos: dict[int, int] | None,
    aux: float,
    device,
    head_k: int = 0,
) -> torch.Tensor:
    """Weighted cross-entropy: each example's target weight 1, its basket mates ``aux``;
    with ``head_k``, over the head of each row only (``head_mask``)."""
    if head_k > 0:
        logits = logits + head_mask(logits, targets, cand_pos, head_k)
    logp = F.log_softmax(logits, dim=-1)
    total = logits.new_zeros(())
    for r, t in enumerate(targets):
        cols = torch.as_tensor([cand_pos[i] for i in t] if cand_pos is not None else t, device=device)
        w = torch.full((len(t),), aux, device=device, dtype=logp.dtype)
        w[0] = 1.0
        total = total - (logp[r, cols] * w).sum() / w.sum()
    return total / len(targets)


def batch_loss(
    model: nn.Module,
    train: Examples,
    idx: np.ndarray,
    vecs: np.ndarray,
    cfg: RankerTrainConfig,
    sampler: NegativeSampler | None,
    rng: np.random.Generator,
    device: torch.device,
) -> torch.Tensor:
    """The training loss of one batch of examples ``idx``: the feature-aware softmax over the
    catalog (``sampler`` None) or the sampled candidates, plus ``cfg.next_item_weight`` x the causal
    next-item loss. ``model`` is the ``TrainStep`` (or its DistributedDataParallel wrapper); ``vecs``
    the no-grad vector table the features read."""
    use_next = cfg.next_item_weight > 0
    targets = [train.targets[i] for i in idx]
    if sampler is None:
        cand_rows, cand_pos, corr = None, None, None
    else:
        seq_own = train.points.seq_items[idx].ravel() if use_next else np.zeros(0, np.int64)
        forced = np.unique(np.concatenate([*targets, train.points.personal[idx].indices, seq_own[seq_own >= 0]]))
        cand_rows, corr = sampler.sample(rng, forced)
        cand_pos = {int(c): i for i, c in enumerate(cand_rows)}
    seq_rows, seq_types, feats = _batch_inputs(train.points, idx, vecs, device, cand_rows)
    out = model(
        seq_rows,
        seq_types,
        feats,
        None if cand_rows is None else torch.from_numpy(cand_rows).to(device),
        next_item=use_next,
        next_positions=cfg.next_item_positions,
    )
    logits, seq_logits = out if use_next else (out, None)
    if corr is not None:
        corr_t = torch.from_numpy(corr).to(device=device, dtype=logits.dtype)
        logits = logits + corr_t
        seq_logits = None if seq_logits is None else seq_logits + corr_t
    loss = _loss(logits, targets, cand_pos, cfg.aux_target_weight, device, cfg.head_k)
    if seq_logits is not None:
        nxt = next_item_targets(train.points.seq_items[idx], cand_pos)
        if cfg.next_item_positions is not None:
            nxt = np.ascontiguousarray(nxt[:, _newest_prefixes(nxt.shape[1], cfg.next_item_positions)])
        loss = loss + cfg.next_item_weight * next_item_loss(seq_logits, nxt)
    return loss


def train_batch(model: nn.Module, opt: torch.optim.Optimizer, *batch) -> float:
    """One optimizer step on a batch (``batch``: ``batch_loss``'s arguments after the model); returns the loss."""
    loss = batch_loss(model, *batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def fit_ranker(
    step: TrainStep,
    train: Examples,
    inter: Interactions,
    val: Split,
    val_points: PointSet,
    cfg: RankerTrainConfig,
    device: torch.device,
    checkpoint: Path,
) -> RankerTrainResult:
    """Train with early stopping on validation NDCG@10; restores the best state at the end."""
    rank, world = distributed_context()
    seed_everything(cfg.seed)
    if cfg.next_item_weight > 0 and not cfg.causal:
        raise ValueError("the next-item objective needs the causal ranker (causal=True)")
    # Checkpoint 0 is the same either way: its gate is closed, the user vector is the content mean.
    step.ranker.causal = cfg.causal
    model: nn.Module = step
    if world > 1:
        model = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    bert_params = list(step.ranker.bert.parameters())
    bert_ids = {id(p) for p in bert_params}
    head_params = [p for p in step.ranker.parameters() if id(p) not in bert_ids] + [step.log_next_scale]
    groups = [{"params": bert_params, "lr": cfg.lr_bert}, {"params": head_params, "lr": cfg.lr_head}]
    if cfg.lr_items > 0:
        groups.append({"params": list(step.tower.parameters()), "lr": cfg.lr_items})
    else:
        step.tower.requires_grad_(False)
    # fused: one kernel over all parameters (CPU 161 -> 36 ms per step for the 2-layer ranker, same update rule)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=True)
    n_items = inter.n_items
    full = n_items <= cfg.full_softmax_max_items
    rng = np.random.default_rng(cfg.seed)
    n_examples = len(train.points) if cfg.max_examples is None else min(cfg.max_examples, len(train.points))
    if cfg.examples_per_epoch is not None:
        n_examples = min(n_examples, cfg.examples_per_epoch)
    # Every rank gets the same number of examples, hence of steps (an extra step on one rank would
    # wait forever for the others' gradients).
    n_examples -= n_examples % world
    # batch_size is the global batch: rank r's k-th batch is every world-th example of the one
    # process's k-th batch, so 1 and N processes take the same steps on the same examples.
    rank_batch = max(1, cfg.batch_size // world)
    sampler = (
        None
        if full
        else NegativeSampler(
            np.bincount(inter.items[val.fit], minlength=n_items).astype(np.float64),
            cfg.sampled_negatives,
            cfg.popularity_share,
        )
    )
    val_idx = np.arange(len(val))
    if cfg.val_cases is not None and len(val) > cfg.val_cases:
        val_idx = np.sort(np.random.default_rng(cfg.seed).choice(len(val), cfg.val_cases, replace=False))
    result = RankerTrainResult()
    log.info(
        "ranker: %d of %d examples per epoch, %s, early stopping on %d of %d validation cases%s",
        n_examples,
        len(train.points),
        "softmax over the catalog" if full else f"sampled softmax ({cfg.sampled_negatives} negatives)",
        len(val_idx),
        len(val),
        f" (rank {rank} of {world})" if world > 1 else "",
    )

    def validate(at: float) -> tuple[float, bool]:
        """Validation NDCG@10 now (rank 0; others 0.0); checkpoint and record when it is the best."""
        ndcg = (
            float(case_ndcg(model_scorer(step, val_points, device), inter, val, val_idx).mean()) if rank == 0 else 0.0
        )
        better = ndcg > result.best_val_ndcg
        if better:
            result.best_val_ndcg, result.best_epoch = ndcg, at
            if rank == 0:
                torch.save(step.state_dict(), checkpoint)
        return ndcg, better

    t_fit = time.perf_counter()
    validate(0)
    result.initial_val_ndcg = result.best_val_ndcg
    if rank == 0:
        log.info("validation NDCG@10 before ranker training: %.4f", result.best_val_ndcg)
    bad_epochs = 0
    out_of_time = False
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        step.train()
        order = rng.permutation(len(train.points))[:n_examples][rank::world]
        total, seen = 0.0, 0
        bar = tqdm(
            range(0, len(order), rank_batch),
            desc=f"ranker epoch {epoch}",
            leave=False,
            mininterval=5,
            disable=None if rank == 0 else True,
        )
        n_steps = len(bar)
        improved_inside = False
        last_line = t0
        for step_no, s in enumerate(bar, start=1):
            idx = order[s : s + rank_batch]
            if full or (step_no - 1) % max(cfg.tower_refresh_steps, 1) == 0:
                with torch.no_grad():
                    vecs = step.tower().float().cpu().numpy()
            total += train_batch(model, opt, train, idx, vecs, cfg, sampler, rng, device) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
            if rank == 0 and time.perf_counter() - last_line >= PROGRESS_EVERY_S:
                last_line = time.perf_counter()
                log.info(
                    "ranker epoch %d: step %d/%d, loss %.4f, %.1f examples/s",
                    epoch,
                    step_no,
                    n_steps,
                    total / seen,
                    seen * world / (last_line - t0),
                )
            if cfg.val_every and rank == 0 and step_no % cfg.val_every == 0 and step_no < n_steps:
                # A check inside the epoch: checkpoint when better; stopping is decided at epoch ends
                # only, so every rank of a distributed run stops at the same step.
                at = round(epoch - 1 + step_no / n_steps, 3)
                inner, better = validate(at)
                improved_inside |= better
                result.history.append(EpochLog(at, total / max(seen, 1), inner, time.perf_counter() - t0))
                log.info(
                    "epoch %.2f: loss %.4f, validation NDCG@10 %.4f (best %.4f)",
                    at,
                    total / max(seen, 1),
                    inner,
                    result.best_val_ndcg,
                )
                step.train()
            if cfg.time_budget_s is not None:
                over = torch.tensor([int(time.perf_counter() - t_fit >= cfg.time_budget_s)])
                if world > 1:  # rank 0's clock decides, so every rank stops after the same step
                    dist.broadcast(over, src=0)
                if over.item():
                    out_of_time = True
                    break
        train_s = time.perf_counter() - t0
        at = round(epoch - 1 + step_no / n_steps, 3) if out_of_time else epoch
        val_ndcg, improved = validate(at)
        if improved or improved_inside:
            bad_epochs = 0
        else:
            bad_epochs += 1
        entry = EpochLog(at, total / max(seen, 1), val_ndcg, time.perf_counter() - t0)
        result.history.append(entry)
        if rank == 0:  # examples of all ranks (each trains as many); the loss is rank 0's share
            log.info(
                "epoch %g: loss %.4f, validation NDCG@10 %.4f (best %.4f @ %g), %.0fs (%d examples, %.1f examples/s training, "
                "%.1f incl. validation)%s",
                at,
                entry.loss,
                val_ndcg,
                result.best_val_ndcg,
                result.best_epoch,
                entry.seconds,
                seen * world,
                seen * world / max(train_s, 1e-9),
                seen * world / max(entry.seconds, 1e-9),
                f"; time budget of {cfg.time_budget_s:g}s reached, training stops" if out_of_time else "",
            )
        stop = torch.tensor([int(bad_epochs >= cfg.patience or out_of_time)])
        if world > 1:
            dist.broadcast(stop, src=0)
        if stop.item():
            break
    if world > 1:
        dist.barrier()  # rank 0 has written the best checkpoint
    step.load_state_dict(torch.load(checkpoint, map_location=device))
    return result


def config_dict(*cfgs) -> dict:
    return {type(c).__name__: asdict(c) for c in cfgs}
