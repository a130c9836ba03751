"""The contract every registered strategy obeys (in the manner of Optuna's shared sampler tests).

Parametrized over ``list_strategies()``: a new strategy is checked as soon as it registers, and
fails until it declares its :class:`~hpo_bench.strategy.Reduction`.

* reduction: under its declared parameters the strategy trains exactly like the declared target
  (weights, BN running statistics, per-epoch metrics), bit for bit on CPU;
* ledger: a run is charged at least what the gradients it really takes compute: every
  ``torch.autograd.grad`` / ``backward`` call counts 1, and a call whose backward runs through the
  graph of earlier ``create_graph=True`` gradient calls (a double backward, e.g. the exact
  hypergradient's reverse pass through an unroll) counts 2 per such call it differentiates
  (:mod:`hpo_bench.ledger`); the reduced run is charged at least what the target is;
* ``trace()`` / ``summary()``: string keys, finite float summary values (``rho_final`` may be NaN
  only for ERM); the same trace keys at every traced step, float values, never infinite (NaN marks a
  value not computed at that step, e.g. the hypergradient between unrolls);
* determinism: the same seed gives the same metrics, traces and summary.
"""
from __future__ import annotations

import math

import pytest
import torch

from hpo_bench.strategy import STRATEGIES, create_strategy, get_strategy_class, list_strategies
from hpo_bench.trainer import Trainer
from tests.conftest import synthetic_bundle, train_cfg

RHO = {"sam": 0.05, "asam": 0.5}  # a usable ρ per perturbation kind; ASAM's radius is larger


def _rho(name: str) -> float:
    return RHO["asam"] if "asam" in name else RHO["sam"]


def _as_list(tensors) -> list:
    if tensors is None:
        return []
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


class CountingAutograd:
    """Counts what the gradient computations of a block compute, in grad evals.

    Every ``torch.autograd.grad`` / ``torch.autograd.backward`` call counts 1, unless its backward runs
    through the graph of m ≥ 1 earlier ``create_graph=True`` gradient calls: then it counts 2m (a
    double backward per such call, the ledger's unit). A node is run by a call iff it is reachable
    from the call's outputs and leads to one of its inputs (``grad``) or to any leaf (``backward``);
    the nodes behind an input are not run, so a first-order gradient at a point that merely depends
    on an earlier gradient (SAM's θ + ρ g/‖g‖) still counts 1.
    """

    def __init__(self, monkeypatch):
        self.calls = 0  # the count in grad evals
        self.n_calls = 0  # the number of calls
        self.second_order: dict = {}  # grad_fn node of a create_graph output -> index of that call
        self.keep: list = []  # strong references: node identity must not be reused while counting
        for name in ("grad", "backward"):
            original = getattr(torch.autograd, name)

            def counted(*args, _original=original, _name=name, **kwargs):
                self.calls += self._cost(_name, args, kwargs)
                self.n_calls += 1
                out = _original(*args, **kwargs)
                if _name == "grad" and self._arg(args, kwargs, "create_graph", 4, False):
                    for t in _as_list(out):
                        if t is not None and t.grad_fn is not None:
                            self.second_order[t.grad_fn] = self.n_calls
                            self.keep.append(t.grad_fn)
                return out

            monkeypatch.setattr(torch.autograd, name, counted)

    @staticmethod
    def _arg(args, kwargs, key, pos, default):
        return kwargs[key] if key in kwargs else (args[pos] if len(args) > pos else default)

    def _cost(self, name, args, kwargs) -> int:
        outputs = _as_list(self._arg(args, kwargs, "outputs" if name == "grad" else "tensors", 0, None))
        inputs = _as_list(self._arg(args, kwargs, "inputs", 1 if name == "grad" else 99, None))
        if not self.second_order:
            return 1
        targets = set()
        for t in inputs:  # an input's gradient is taken at its edge: its own grad_fn is not run
            targets.add(t.grad_fn if t.grad_fn is not None else ("leaf", id(t)))
        leads: dict = {}  # node -> whether the call runs it (it leads to a target)
        roots = [t.grad_fn for t in outputs if t.grad_fn is not None]
        stack = [(n, False) for n in roots]
        while stack:  # iterative post-order DFS
            node, expanded = stack.pop()
            if node in leads and not expanded:
                continue
            children = [c for c, _ in node.next_functions if c is not None]
            if not expanded:
                leads.setdefault(node, False)
                stack.append((node, True))
                stack.extend((c, False) for c in children if c not in leads and c not in targets)
                continue
            hit = False
            for c in children:
                if c in targets or (not targets and type(c).__name__ == "AccumulateGrad"):
                    hit = True
                elif targets and type(c).__name__ == "AccumulateGrad" and ("leaf", id(c.variable)) in targets:
                    hit = True
                elif leads.get(c, False):
                    hit = True
            leads[node] = hit
        reached = {self.second_order[n] for n, run in leads.items() if run and n in self.second_order}
        return 2 * len(reached) if reached else 1


def _fit(name: str, rho: float, params: dict | None = None, seed: int = 0):
    tr = Trainer(synthetic_bundle(), "tiny_bn", train_cfg(epochs=3), create_strategy(name, rho, params), seed)
    return tr.fit(), tr


def _metrics(result) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("wall_s", "grad_evals", "rho")} for e in result.epochs]


@pytest.fixture(params=list_strategies())
def strategy_name(request) -> str:
    return request.param


def test_registry_lists_every_strategy_module():
    names = set(list_strategies())
    assert {"erm", "sam", "asam", "lets-sam", "lets-asam", "hypergrad-sam", "hypergrad-asam", "ae-sam",
            "looksam", "ae-looksam", "samar"} <= names
    with pytest.raises(ValueError, match="registered twice"):
        STRATEGIES.register("sam", type("Other", (), {}))


def test_declares_a_reduction_to_a_registered_strategy(strategy_name):
    red = get_strategy_class(strategy_name).reduces_to
    assert red is not None, f"{strategy_name}: declare reduces_to = Reduction(...) (see hpo_bench.strategy)"
    assert red.to in list_strategies() and red.to != strategy_name
    cls = get_strategy_class(strategy_name)
    cls.Params(**red.params)  # the declared parameters exist


def test_reduction_is_bit_for_bit(strategy_name):
    red = get_strategy_class(strategy_name).reduces_to
    rho = _rho(strategy_name) if red.rho is None else red.rho
    res, tr = _fit(strategy_name, rho, red.params)
    ref, ref_tr = _fit(red.to, rho, red.to_params)
    assert res.status == ref.status == "ok", (res.reason, ref.reason)
    assert _metrics(res) == _metrics(ref)
    assert all(torch.equal(p, q) for p, q in zip(tr.params, ref_tr.params))
    bufs, ref_bufs = dict(tr.model.named_buffers()), dict(ref_tr.model.named_buffers())
    for key, buf in bufs.items():  # num_batches_tracked counts passes and is never used
        if "num_batches_tracked" not in key:
            assert torch.equal(buf, ref_bufs[key]), key
    assert res.ledger["grad_evals"] >= ref.ledger["grad_evals"]


def test_ledger_charges_every_gradient_taken(strategy_name, monkeypatch):
    counter = CountingAutograd(monkeypatch)
    res, tr = _fit(strategy_name, _rho(strategy_name))
    assert res.status == "ok", res.reason
    assert counter.n_calls >= tr.total_steps  # at least the first pass of every step
    assert res.ledger["grad_evals"] >= counter.calls, (res.ledger["grad_evals"], counter.calls)
    assert res.ledger["fwd_evals"] > 0 and res.ledger["wall_s"] > 0


def test_trace_and_summary_shape(strategy_name):
    res, tr = _fit(strategy_name, _rho(strategy_name))
    summary = tr.strategy.summary()
    assert "rho_final" in summary and all(isinstance(k, str) for k in summary)
    for key, value in summary.items():
        assert math.isfinite(float(value)) or (key == "rho_final" and strategy_name == "erm"), (key, value)
    if res.traces:
        keys = set(res.traces[0]) - {"step", "epoch"}
        assert keys and all(set(t) - {"step", "epoch"} == keys for t in res.traces)
        values = [float(t[k]) for t in res.traces for k in keys]  # NaN: not computed at that step
        assert not any(math.isinf(v) for v in values) and any(math.isfinite(v) for v in values)


def test_same_seed_same_run(strategy_name):
    a, _ = _fit(strategy_name, _rho(strategy_name), seed=3)
    b, _ = _fit(strategy_name, _rho(strategy_name), seed=3)
    assert _metrics(a) == _metrics(b)
    assert a.traces == b.traces
    assert a.ledger["grad_evals"] == b.ledger["grad_evals"]
    assert a.summary.keys() == b.summary.keys()
    for key in a.summary:
        assert a.summary[key] == b.summary[key] or (math.isnan(a.summary[key]) and math.isnan(b.summary[key])), key
