"""Report generator on a synthetic results store: every table and figure, numbers with their intervals and
paired comparisons, the significance rule for bold, costs per replicate, failures, missing methods, errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from hpo_bench.cli import main
from hpo_bench.report import FIGURES, build_entries, load_results, write_report
from hpo_bench.report.budget import spread
from hpo_bench.report.curves import Curves, dnu_snr, dnu_snr_runs, dnu_updates, fig_rho
from hpo_bench.report.figures import Styles, collapsed, fig_pareto
from hpo_bench.stats import holm, wilcoxon_p
from hpo_bench.store import ResultsStore

SEEDS = [0, 1, 2]
NOISE = [0.2, 0.4]
EPOCHS = 4
STEPS_PER_EPOCH = 10
GRID = [0.01, 0.05, 0.1]
SPEC_METHODS = [
    {"label": "ERM", "strategy": "erm", "rho": 0.05, "params": {}},
    {"label": "SAM", "strategy": "sam", "rho": 0.05, "params": {}},
    {"label": "ASAM", "strategy": "asam", "rho": 0.5, "params": {"xi": 0.01}},
    {"label": "Grid SAM", "strategy": "sam", "rho": 0.05, "params": {}, "search": {"kind": "grid", "grid": GRID}},
    {"label": "LETS-SAM", "strategy": "lets-sam", "rho": [0.05, 0.5], "params": {"beta": 0.01, "metric": "sq_gap"}},
    {"label": "LETS-SAM gap", "strategy": "lets-sam", "rho": [0.05, 0.5], "params": {"beta": 0.01, "metric": "gap"}},
    {"label": "AE-SAM", "strategy": "ae-sam", "rho": 0.05, "params": {}},
    {"label": "SAMAR", "strategy": "samar", "rho": 0.05, "params": {}},
    {"label": "SAM huge", "strategy": "sam", "rho": 5.0, "params": {}},
    {"label": "LookSAM", "strategy": "looksam", "rho": 0.05, "params": {}},  # in the spec, never run: "missing"
]
COST = {"erm": 1, "sam": 2, "asam": 2, "lets-sam": 3, "ae-sam": 1.5, "samar": 2}


def _run(rng, method, strategy, rho0, seed, noise, params, search="", status="ok", acc_range=(0.5, 0.9)):
    steps = EPOCHS * STEPS_PER_EPOCH
    n_epochs = EPOCHS if status == "ok" else 1
    acc = [float(np.round(rng.uniform(*acc_range), 4)) for _ in range(n_epochs)]
    val = [float(np.round(a + rng.uniform(-0.05, 0.05), 4)) for a in acc]
    best = int(np.argmax(val))
    rid = f"{method}-{rho0}-{seed}-{noise}-{search}".replace(" ", "_")
    grad = COST[strategy] * (steps if status == "ok" else STEPS_PER_EPOCH)
    nan = float("nan")
    ok = status == "ok"
    row = {"run_id": rid, "method": method, "strategy": strategy, "search": search, "rho0": rho0, "seed": seed,
           "dataset": "mnist1d", "model": "mnist1d_mlp", "label_noise": noise, "device": "cpu",
           "params": json.dumps(params, sort_keys=True), "status": status,
           "reason": "" if ok else ("non-finite loss" if status == "diverged" else "stopped by user"),
           "stop_step": -1 if ok else 7, "epochs_done": n_epochs, "best_epoch": best + 1 if ok else -1,
           "best_val_acc": val[best] if ok else nan, "test_acc": acc[best] if ok else nan,
           "last_val_acc": val[-1] if ok else nan, "last_test_acc": acc[-1] if ok else nan,
           "last_train_loss": 0.5 if ok else nan, "last_train_acc": 0.95 if ok else nan, "last_val_loss": 0.8 if ok else nan,
           "last_test_loss": 0.9 if ok else nan, "grad_evals": grad, "fwd_evals": 3 * n_epochs,
           "wall_s": float(rng.uniform(1, 3) * COST[strategy]), "device_s": float(rng.uniform(1, 3)),
           "peak_mem_bytes": int(rng.integers(700, 800) * 2 ** 20), "steps": float(steps if ok else 7),
           "rho_final": nan if strategy == "erm" else (rho0 * 1.7 if strategy == "lets-sam" else rho0),
           "sam_fraction": float(rng.uniform(0.2, 0.6)) if strategy == "ae-sam" else nan,
           "lambda_final": float(rng.uniform(0.5, 1.5)) if strategy == "samar" else nan,
           "finished_at": 1.7e9 + rng.uniform(0, 100), "setting.data.label_noise": noise}
    curves = []
    for e in range(1, n_epochs + 1):
        vals = {"train_loss": 2.0 / e, "train_acc": 0.5 + 0.1 * e, "val_loss": 2.2 / e, "val_acc": val[e - 1],
                "test_loss": 2.3 / e, "test_acc": acc[e - 1], "rho": rho0, "grad_evals": grad * e / n_epochs,
                "wall_s": row["wall_s"] * e / n_epochs}
        curves += [(rid, "epoch", e, e * STEPS_PER_EPOCH, k, v) for k, v in vals.items()]
    for t in range(1, (steps if ok else 7) + 1):
        ep = (t - 1) // STEPS_PER_EPOCH + 1
        if strategy == "lets-sam":
            trace = {"rho": rho0 * (1 + 0.7 * t / steps), "metric_M": 0.1, "dM_dnu": lets_dnu(t)}
        elif strategy == "ae-sam":
            trace = {"sam_step": float(rng.random() < 0.4), "sq_grad_norm": 1.0, "ema_mu": 1.0, "ema_sigma": 0.1,
                     "threshold_c": 0.5}
        elif strategy == "samar":
            trace = {"ratio_r": 1.0, "ratio_r_bar": 1.0, "lambda": 1 + 0.01 * t}
        else:
            trace = {}
        curves += [(rid, "step", ep, t, k, float(v)) for k, v in trace.items()]
    return row, curves


def lets_dnu(t: int) -> float:
    """The synthetic LETS hypergradient dM/dν at step t: a small negative mean under a larger oscillation."""
    return -0.002 + 0.01 * float(np.sin(t))


def fidelity_steps(rng, n: int = 20) -> pd.DataFrame:
    """fidelity.parquet as `hpo-bench fidelity` writes it: LETS's estimate ~600x smaller than the exact K = 1
    value, with the same sign on 15 of the 20 probed steps."""
    exact = rng.normal(0, 1e-5, n)
    flip = np.where(np.arange(n) % 4 == 3, -1.0, 1.0)
    lets = flip * exact / 600 * rng.uniform(0.5, 1.5, n)
    return pd.DataFrame({"step": 5 * np.arange(n), "epoch": np.arange(n) // 10, "lr": 0.1, "rho": 0.05, "K": 5,
                         "M_lets": 1e-4, "M_k1": 1e-4, "M_kK": 2e-4, "lets_appendix": lets, "lets_literal": 1.1 * lets,
                         "exact_k1": exact, "exact_kK": rng.normal(0, 1e-5, n), "time_k1_s": 0.01, "time_kK_s": 0.05})


def make_store(root: Path, seed: int = 0, spec_methods=SPEC_METHODS, noise=NOISE, seeds=SEEDS, plant=None,
               nested=True) -> Path:
    """A results directory as `hpo-bench run` writes it (runs, curves, searches, anytime, metadata, fidelity).
    ``plant``: {label: (low, high)} draws that method's accuracies from another range (a planted winner);
    ``nested``: the grid search selects on seeds 1000 + s and is evaluated by fresh runs at ρ* on the seeds
    (False: a store written before nested selection, whose accuracy is that of its trials at ρ*)."""
    plant = plant or {}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, curves, searches, anytime = [], [], [], []
    for nz in noise:
        for m in spec_methods:
            label, strategy, params = m["label"], m["strategy"], m["params"]
            if label == "LookSAM":
                continue
            if m.get("search"):
                trials = []
                sel_seeds = [1000 + s for s in seeds] if nested else list(seeds)
                for rho in m["search"]["grid"]:
                    for s in sel_seeds:
                        status = "diverged" if (rho == GRID[-1] and s == sel_seeds[2]) else "ok"
                        r, c = _run(rng, label, strategy, rho, s, nz, params, search="grid/local", status=status)
                        trials.append(r)
                        curves += c
                rows += trials
                t = pd.DataFrame(trials)
                ok = t[t["status"] == "ok"]
                by_rho = ok.groupby("rho0")["best_val_acc"].mean()
                star = float(by_rho.idxmax())
                at = ok[ok["rho0"] == star]
                summary = {"method": label, "strategy": strategy, "search": "grid/local", "n_trials": len(t),
                           "n_failed": int((t["status"] != "ok").sum()), "rho_star": star, "val_acc_mean": float(by_rho.max()),
                           "test_acc_mean": float(at["test_acc"].mean()), "test_acc_std": float(at["test_acc"].std(ddof=1)),
                           "n_seeds_at_star": len(at), "setting.data.label_noise": nz,
                           **{f"cost_{c}": float(t[c].sum()) for c in ("grad_evals", "fwd_evals", "wall_s", "device_s")}}
                if nested:  # nested selection: fresh evaluation runs at rho* on the spec's seeds, charged to the search
                    ev = []
                    for s in seeds:
                        r, c = _run(rng, label, strategy, star, s, nz, params, search="grid/local/eval")
                        ev.append(r)
                        curves += c
                    rows += ev
                    e = pd.DataFrame(ev)
                    summary.update({"sel_test_acc_mean": summary["test_acc_mean"], "test_acc_mean": float(e["test_acc"].mean()),
                                    "test_acc_std": float(e["test_acc"].std(ddof=1)), "n_eval": len(e), "n_eval_ok": len(e),
                                    **{f"cost_{c}": summary[f"cost_{c}"] + float(e[c].sum())
                                       for c in ("grad_evals", "fwd_evals", "wall_s", "device_s")}})
                searches.append(summary)
                t = t.sort_values("finished_at")
                for k in range(1, len(t) + 1):
                    anytime.append({"method": label, "trial": k, "cum_grad_evals": float(t["grad_evals"].iloc[:k].sum()),
                                    "cum_wall_s": float(t["wall_s"].iloc[:k].sum()), "rho_star": star,
                                    "test_acc": float(t["test_acc"].iloc[:k].max())})
                continue
            for rho in (m["rho"] if isinstance(m["rho"], list) else [m["rho"]]):
                for s in seeds:
                    status = "ok"
                    if label == "SAM huge":
                        status = ("diverged" if s == 0 else "ok") if nz == noise[0] else ("stopped" if s == 2 else "diverged")
                    r, c = _run(rng, label, strategy, rho, s, nz, params, status=status,
                                acc_range=plant.get(label, (0.5, 0.9)))
                    rows.append(r)
                    curves += c
    pd.DataFrame(rows).to_parquet(root / "runs.parquet", index=False)
    pd.DataFrame(curves, columns=["run_id", "scope", "epoch", "step", "metric", "value"]).to_parquet(
        root / "curves.parquet", index=False)
    if searches:
        pd.DataFrame(searches).to_parquet(root / "searches.parquet", index=False)
        pd.DataFrame(anytime).to_parquet(root / "anytime.parquet", index=False)
    pd.DataFrame([{"estimator": "lets_appendix", "reference": "exact_k1", "n": 20, "sign_agreement": 0.85,
                   "spearman": 0.61, "median_rel_error": 0.93},
                  {"estimator": "lets_appendix", "reference": "exact_kK", "n": 20, "sign_agreement": 0.7,
                   "spearman": 0.42, "median_rel_error": 1.4}]).to_parquet(root / "fidelity_summary.parquet", index=False)
    fidelity_steps(rng).to_parquet(root / "fidelity.parquet", index=False)
    spec = {"name": "synthetic", "description": "synthetic store for the report tests", "seeds": list(seeds),
            "data": {"dataset": "mnist1d", "num_samples": 500, "label_noise": 0.0},
            "model": {"name": "mnist1d_mlp"}, "train": {"epochs": EPOCHS, "batch_size": 50, "lr": 0.1},
            "vary": {"data.label_noise": list(noise)} if len(noise) > 1 else {},
            "methods": [{**m, "search": m.get("search")} for m in spec_methods], "report": True}
    (root / "metadata.json").write_text(json.dumps({
        "spec": spec, "command": "hpo-bench run synthetic.toml --out x", "created": "2026-01-01T00:00:00+0000",
        "versions": {"python": "3.11", "pandas": pd.__version__}, "git_commit": "abc123",
        "hardware": {"platform": "test", "cpu_count": 2, "cuda": False}}))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = make_store(tmp_path_factory.mktemp("rep") / "synthetic-00000000")
    path = write_report(root)
    return root, path.read_text()


def section(md: str, title: str) -> str:
    """The text of the level-2 section ``title`` (its number may be left out)."""
    found = re.search(rf"^## (\d+\. )?{re.escape(title)}$", md, flags=re.M) if not title[0].isdigit() else None
    start = found.start() if found else md.index(f"## {title}")
    nxt = md.find("\n## ", start + 3)
    return md[start: nxt if nxt >= 0 else len(md)]


def parse_tables(text: str) -> dict:
    """{sub-heading or '': [row dicts]} of the markdown tables in ``text`` (one sub-heading: concatenated)."""
    out, heading, header = {}, "", None
    for line in text.splitlines():
        if line.startswith("#### "):
            heading = line[5:].strip()
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if header is None:
                header = cells
                out.setdefault(heading, [])
            else:
                out[heading].append(dict(zip(header, cells)))
        elif not line.startswith("|"):
            header = None
    return out


ACC = "test acc (%) [95% CI]"


def ci_text(values, scale=100.0) -> str:
    """'mean [low, high]' with scipy's BCa bootstrap (9999 resamples, seed 0): an independent aggregation."""
    x = np.asarray(values, dtype=float)
    text = f"{scale * x.mean():.2f}"
    if len(x) > 1 and np.ptp(x) > 0:
        ci = sps.bootstrap((x,), np.mean, n_resamples=9999, method="BCa", rng=np.random.default_rng(0)).confidence_interval
        text += f" [{scale * ci.low:.2f}, {scale * ci.high:.2f}]"
    return text


def test_every_table_and_figure_is_produced(store):
    root, md = store
    for title in ("1. Test accuracy", "2. Cost per replicate", "3. Compute of the whole study",
                  "4. Equal budget: the best strategy at each cost", "5. Average ranks across settings",
                  "6. Robustness to ρ₀", "7. Generalization metric", "8. Label noise", "9. Hypergradient fidelity",
                  "10. Adaptive SAM statistics", "11. Hypergradient signal-to-noise", "Figures", "Notes"):
        assert f"## {title}" in md, title
    for name in FIGURES:
        png = root / "figures" / f"{name}.png"
        assert png.exists() and png.stat().st_size > 2000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](figures/{name}.png)" in md
    figures = section(md, "Figures")  # the one figure this store has no data for: a fixed-ρ response
    assert figures.count("skipped") == 1 and "ρ-response" in figures.split("skipped")[0].rsplit("\n", 1)[-1]
    for fact in ("synthetic store for the report tests", "hpo-bench run synthetic.toml --out x", "abc123",
                 "cpu_count=2", "seeds | 0, 1, 2", str(root.resolve())):
        assert fact in md, fact


def test_main_table_numbers_equal_an_independent_aggregation(store):
    root, md = store
    runs = pd.read_parquet(root / "runs.parquet")
    searches = pd.read_parquet(root / "searches.parquet")
    tables = parse_tables(section(md, "1. Test accuracy"))
    assert set(tables) == {f"data.label_noise = {n:g}" for n in NOISE}
    n_checked = 0
    for nz in NOISE:
        rows = {r["method"]: r for r in tables[f"data.label_noise = {nz:g}"]}
        plain = runs[(runs["search"] == "") & (runs["setting.data.label_noise"] == nz)]
        ok = plain[plain["status"] == "ok"]
        sam = ok[ok["method"] == "SAM"].set_index("seed")["test_acc"]
        p_raw = {}
        for method, g in ok.groupby("method"):
            subgroups = g.groupby("rho0") if plain[plain["method"] == method]["rho0"].nunique() > 1 else [(None, g)]
            for rho0, gg in subgroups:
                label = method if rho0 is None else f"{method} (ρ₀={rho0:g})"
                assert rows[label][ACC] == ci_text(gg["test_acc"]), label
                total = len(plain[(plain["method"] == method) & ((plain["rho0"] == rho0) if rho0 is not None else True)])
                assert rows[label]["runs ok/total"] == f"{len(gg)}/{total}"
                if method != "SAM":  # paired with SAM by seed
                    d = (gg.set_index("seed")["test_acc"] - sam).dropna()
                    assert rows[label]["Δ vs SAM (pp) [95% CI]"].startswith(f"{100 * d.mean():+.2f} [")
                    assert rows[label]["p vs SAM (Holm)"].endswith(f"(n={len(d)})")
                    p_raw[label] = wilcoxon_p(d.to_numpy())
                n_checked += 1
        s = searches[searches["setting.data.label_noise"] == nz].iloc[0]
        # nested selection: the search's accuracy is that of its evaluation runs at rho*, on the spec's seeds
        at = runs[(runs["search"] == "grid/local/eval") & (runs["setting.data.label_noise"] == nz)]
        assert set(at["rho0"]) == {s["rho_star"]} and set(at["seed"]) == set(SEEDS)
        assert rows["Grid SAM"][ACC] == ci_text(at["test_acc"]) and f"{100 * s['test_acc_mean']:.2f} [" in rows["Grid SAM"][ACC]
        assert rows["Grid SAM"]["ρ"] == f"ρ*={s['rho_star']:g}"
        assert rows["Grid SAM"]["runs ok/total"] == f"{s['n_trials'] - s['n_failed']}/{s['n_trials']} trials + 3/3 eval"
        d = (at.set_index("seed")["test_acc"] - sam).dropna()
        p_raw["Grid SAM"] = wilcoxon_p(d.to_numpy())
        # the p column is Holm across every method of the table compared with SAM
        labels = list(p_raw)
        for label, adj in zip(labels, holm([p_raw[k] for k in labels])):
            assert rows[label]["p vs SAM (Holm)"].startswith(f"{adj:.3f}".rstrip("0").rstrip(".") if adj < 1 else "1")
        assert rows["SAM"]["Δ vs SAM (pp) [95% CI]"] == "reference" and rows["ERM"]["Δ vs ERM (pp) [95% CI]"] == "reference"
        assert rows["LETS-SAM (ρ₀=0.05)"]["ρ"] == "0.05 → 0.085"
        # three seeds: a smoke run, and nothing is bold (two-sided Wilcoxon p ≥ 0.25 with 3 pairs)
        assert not any("**" in r[ACC] for r in rows.values())
    assert "Smoke run, not a verdict" in section(md, "1. Test accuracy")
    assert "significantly best" in section(md, "1. Test accuracy")
    assert n_checked >= 2 * 8


def test_bold_only_a_significant_winner(tmp_path):
    """12 seeds: a planted winner (always ahead) is bold, alone, in the accuracy and label-noise tables; the same
    store without it has no bold at all."""
    methods = SPEC_METHODS[:3] + SPEC_METHODS[6:8]
    seeds = list(range(12))
    win = make_store(tmp_path / "win", spec_methods=methods, seeds=seeds, plant={"AE-SAM": (0.92, 0.95)})
    md = write_report(win).read_text()
    assert "Smoke run" not in md
    for nz in NOISE:
        rows = {r["method"]: r for r in parse_tables(section(md, "1. Test accuracy"))[f"data.label_noise = {nz:g}"]}
        bold = [m for m, r in rows.items() if r[ACC].startswith("**")]
        assert bold == ["AE-SAM"]
        assert rows["AE-SAM"]["P(> SAM) [95% CI]"].startswith("1.00")
        assert rows["AE-SAM"]["p vs SAM (Holm)"].endswith("(n=12)")
    assert "Significantly best: AE-SAM." in section(md, "1. Test accuracy")
    noise = parse_tables(section(md, "Label noise"))[""]
    assert [r["method"] for r in noise if r["noise 0.2"].startswith("**")] == ["AE-SAM"]
    null = make_store(tmp_path / "null", spec_methods=methods, seeds=seeds)
    md = write_report(null).read_text()
    acc = section(md, "1. Test accuracy")
    assert "**" not in acc.split("| method |", 1)[1] and "No method is significantly best" in acc


def test_diverged_and_missing_are_counts_not_numbers(store):
    _, md = store
    tables = parse_tables(section(md, "1. Test accuracy"))
    huge_a = {r["method"]: r for r in tables["data.label_noise = 0.2"]}["SAM huge"]
    assert huge_a["not ok"] == "1 diverged" and huge_a["runs ok/total"] == "2/3" and "[" in huge_a[ACC]
    huge_b = {r["method"]: r for r in tables["data.label_noise = 0.4"]}["SAM huge"]
    assert huge_b[ACC] == "2 diverged, 1 stopped"
    assert not re.search(r"\d+\.\d", huge_b[ACC] + huge_b["ρ"].replace("5", "") + huge_b["Δ vs SAM (pp) [95% CI]"])
    for t in tables.values():
        looksam = {r["method"]: r for r in t}["LookSAM"]
        assert looksam[ACC] == "missing" and looksam["not ok"] == "missing"
    notes = section(md, "Notes")
    assert "SAM huge (data.label_noise = 0.2): 1 run diverged at ρ=5 — non-finite loss (step 7)" in notes
    assert "SAM huge (data.label_noise = 0.4): 1 run stopped at ρ=5 — stopped by user (step 7)" in notes
    assert "LookSAM (strategy `looksam`) is in the spec but has no runs" in notes
    assert "Grid SAM (data.label_noise = 0.2): 1 search trial diverged at ρ=0.1" in notes
    # the label-noise table shows failures as counts too
    noise = parse_tables(section(md, "8. Label noise"))[""]
    assert {r["method"]: r for r in noise}["SAM huge"]["noise 0.4"] == "2 diverged, 1 stopped"


def test_cost_is_per_replicate_and_the_study_total_is_apart(store):
    root, md = store
    runs = pd.read_parquet(root / "runs.parquet")
    rows = {r["method"]: r for r in parse_tables(section(md, "2. Cost per replicate"))["data.label_noise = 0.2"]}
    assert rows["SAM"]["grad evals"] == "80 (×1.00)" and rows["SAM"]["basis"] == "1 run (ok runs of 3 seeds)"
    trials = runs[(runs["method"] == "Grid SAM") & (runs["setting.data.label_noise"] == 0.2)]
    sam = runs[(runs["method"] == "SAM") & (runs["setting.data.label_noise"] == 0.2)]  # not "SAM huge"
    assert rows["SAM"]["wall s"].startswith(f"{sam['wall_s'].mean():.2f} [") and rows["SAM"]["wall s"].endswith("(×1.00)")
    # a grid of 3 points × 3 selection seeds costs, per replicate, one seed's 3 trials (the diverged one stopped
    # early) plus one evaluation run at rho*
    sel, ev = trials[trials["search"] == "grid/local"], trials[trials["search"] == "grid/local/eval"]
    per_rep = sel.groupby("seed")["grad_evals"].sum().mean() + ev["grad_evals"].mean()
    assert rows["Grid SAM"]["basis"] == "3 trials of 1 seed + 1 evaluation run"
    assert rows["Grid SAM"]["grad evals"].startswith(f"{per_rep:.0f} [")
    assert rows["Grid SAM"]["grad evals"].endswith(f"(×{per_rep / sam['grad_evals'].mean():.2f})")
    wall = sel.groupby("seed")["wall_s"].sum().mean() + ev["wall_s"].mean()
    assert rows["Grid SAM"]["wall s"].startswith(f"{wall:.2f} [")
    assert rows["Grid SAM"]["peak mem (MiB)"].startswith(f"{trials['peak_mem_bytes'].max() / 2 ** 20:.1f} (×")
    assert "LookSAM" not in rows
    study = {r["method"]: r for r in parse_tables(section(md, "3. Compute of the whole study"))[""]}
    grid = runs[runs["method"] == "Grid SAM"]
    assert study["Grid SAM"]["runs"] == str(len(grid)) and study["Grid SAM"]["grad evals"] == f"{grid['grad_evals'].sum():.0f}"
    assert study["**total**"]["grad evals"] == f"**{runs['grad_evals'].sum():.0f}**"


def test_equal_budget_replays_smaller_grids(store):
    root, md = store
    assert spread([0.01, 0.02, 0.05, 0.1, 0.2, 0.5], 1) == [0.1]
    assert spread([0.01, 0.02, 0.05, 0.1, 0.2, 0.5], 2) == [0.02, 0.2]
    assert spread([0.01, 0.02, 0.05, 0.1, 0.2, 0.5], 3) == [0.02, 0.1, 0.5] and spread([1, 2], 5) == [1, 2]
    runs = pd.read_parquet(root / "runs.parquet")
    tables = parse_tables(section(md, "4. Equal budget: the best strategy at each cost"))
    budget = {r["strategy"]: r for r in tables["data.label_noise = 0.2"] if "strategy" in r}
    acc = {r["method"]: r for r in parse_tables(section(md, "1. Test accuracy"))["data.label_noise = 0.2"]}
    assert budget["Grid SAM"]["points"] == "3 of 3" and budget["Grid SAM"][ACC] == acc["Grid SAM"][ACC]
    grid = runs[(runs["method"] == "Grid SAM") & (runs["setting.data.label_noise"] == 0.2)]
    star = float(acc["Grid SAM"]["ρ"].split("=")[1])
    one = grid[(grid["search"] == "grid/local") & (grid["rho0"] == GRID[1])]  # the middle point, selection runs
    one_row = budget["Grid SAM, 1 point"]
    assert one_row["ρ"] == f"ρ*={GRID[1]:g}"
    assert star != GRID[1]  # no evaluation run at this rho: the selection runs' accuracy, marked, not paired
    assert one_row["points"] == "1 of 3 †" and one_row[ACC] == ci_text(one["test_acc"])
    assert one_row["p vs SAM (Holm)"] == "— (no pairs)"
    # cost per replicate: one seed's trial at that point + one evaluation run
    assert one_row["grad evals per replicate"] == "160 (×2.00)"
    assert budget["SAM"]["Δ vs SAM (pp) [95% CI]"] == "reference" and budget["ERM"]["grad evals per replicate"] == "40 (×0.50)"
    costs = [float(r["grad evals per replicate"].split()[0]) for r in tables["data.label_noise = 0.2"] if "strategy" in r]
    assert costs == sorted(costs)
    assert "Best strategy at budget B" in md


def test_a_store_without_evaluation_runs_reports_its_trials_at_rho_star(tmp_path):
    """Before nested selection a search's accuracy is that of its trials at rho* (same seeds as the others) and
    its selected model costs nothing beyond its trials."""
    root = make_store(tmp_path / "old", spec_methods=SPEC_METHODS[:4], noise=[0.0], nested=False)
    md = write_report(root).read_text()
    runs = pd.read_parquet(root / "runs.parquet")
    s = pd.read_parquet(root / "searches.parquet").iloc[0]
    trials = runs[runs["method"] == "Grid SAM"]
    at = trials[(trials["status"] == "ok") & (trials["rho0"] == s["rho_star"])]
    row = {r["method"]: r for r in parse_tables(section(md, "1. Test accuracy"))[""]}["Grid SAM"]
    assert row[ACC] == ci_text(at["test_acc"]) and row["runs ok/total"] == "8/9 trials"
    assert row["p vs SAM (Holm)"].endswith(f"(n={len(at)})")
    cost = {r["method"]: r for r in parse_tables(section(md, "2. Cost per replicate"))[""]}["Grid SAM"]
    assert cost["basis"] == "3 trials of 1 seed"
    assert cost["grad evals"].startswith(f"{trials.groupby('seed')['grad_evals'].sum().mean():.0f} [")


def test_optional_tables_layout(store):
    _, md = store
    rho0 = parse_tables(section(md, "6. Robustness to ρ₀"))["data.label_noise = 0.2"]
    assert [r["method"] for r in rho0] == ["LETS-SAM", "LETS-SAM gap"] and "ρ₀=0.05" in rho0[0] and "ρ₀=0.5" in rho0[0]
    metric = parse_tables(section(md, "7. Generalization metric"))["data.label_noise = 0.2"]
    assert {"sq_gap", "gap"} <= set(metric[0])
    first = {r["strategy"]: r for r in metric}["lets-sam (ρ₀=0.05)"]
    assert "[" in first["sq_gap"] and "[" in first["gap"]
    noise = parse_tables(section(md, "8. Label noise"))[""]
    assert {"noise 0.2", "noise 0.4"} <= set(noise[0])
    fid = parse_tables(section(md, "9. Hypergradient fidelity"))[""]
    assert fid[0]["estimator"] == "lets_appendix" and fid[0]["spearman"] == "0.61"
    assert fid[0]["sign agreement (%) [95% CI]"].startswith("75.0 [")
    adaptive = {r["method"]: r for r in parse_tables(section(md, "10. Adaptive SAM statistics"))["data.label_noise = 0.2"]}
    assert "[" in adaptive["AE-SAM"]["SAM steps (%)"] and "[" in adaptive["SAMAR"]["final λ"]
    ranks = section(md, "5. Average ranks across settings")
    assert "### Across settings (2 blocks" in ranks and "### Across initial radii ρ₀ (4 blocks, 2 methods)" in ranks
    assert "Nemenyi CD =" in ranks


def test_figures_stay_readable(tmp_path):
    """A collapsed method is drawn apart (named below the axis), and no two labels share a colour."""
    assert collapsed({"a": 93.1, "b": 92.8, "c": 93.4, "d": 92.9, "LookSAM": 65.9, "AE-LookSAM": 63.3}) == {
        "LookSAM", "AE-LookSAM"}
    assert collapsed({"ERM": 77.1, "SAM": 74.9, "ASAM": 63.4, "LETS": 63.1, "LETS-ASAM": 39.2}) == set()  # a real spread
    styles = Styles([f"m{i}" for i in range(40)])
    assert len({styles(f"m{i}")[0] for i in range(40)}) == 40
    root = make_store(tmp_path / "collapse", spec_methods=SPEC_METHODS[:3] + SPEC_METHODS[6:8], noise=[0.0],
                      plant={"SAMAR": (0.1, 0.12)})
    res = load_results(root)
    settings, entries = build_entries(res)
    fig = fig_pareto(res, settings, entries, Styles([e.label for e in entries]), "grad_evals", "grad evals")
    (ax,) = fig.axes
    assert ax.get_title().startswith("▼ below the axis: SAMAR ") and ax.get_ylim()[0] > 40
    colours = [tuple(c.lines[0].get_color()) for c in ax.containers]  # one errorbar per method
    assert len(colours) == len(set(colours)) == 5


def test_fidelity_directory_gets_a_report_with_a_figure(tmp_path):
    """The directory `hpo-bench fidelity` writes (no metadata, no runs) gets its table and the LETS-vs-exact figure."""
    root = tmp_path / "fidelity-1234"
    root.mkdir()
    steps = fidelity_steps(np.random.default_rng(0))
    steps.to_parquet(root / "fidelity.parquet", index=False)
    assert main(["report", str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "## 1. Hypergradient fidelity" in md and "](figures/fidelity.png)" in md
    assert (root / "figures" / "fidelity.png").stat().st_size > 2000
    agree = np.mean(np.sign(steps["lets_appendix"]) == np.sign(steps["exact_k1"]))
    row = {(r["estimator"], r["reference"]): r for r in parse_tables(section(md, "1. Hypergradient fidelity"))[""]}
    assert row[("lets_appendix", "exact_k1")]["sign agreement (%) [95% CI]"].startswith(f"{100 * agree:.1f} [")


def test_rho_response_figure_draws_a_fixed_rho_list_against_erm(tmp_path):
    methods = [{"label": "ERM", "strategy": "erm", "rho": 0.05, "params": {}},
               {"label": "SAM", "strategy": "sam", "rho": [0.01, 0.05, 0.1, 0.2], "params": {}}]
    root = make_store(tmp_path / "resp", spec_methods=methods, noise=[0.0])
    write_report(root)
    png = root / "figures" / "rho_response.png"
    assert png.exists() and png.stat().st_size > 2000
    md = (root / "report.md").read_text()
    assert "](figures/rho_response.png)" in md


def test_html_is_self_contained(store):
    root, _ = store
    path = write_report(root, fmt="html")
    assert path.name == "report.html"
    text = path.read_text()
    assert text.count("data:image/png;base64,") == len(FIGURES)
    assert 'src="figures/' not in text and "<table>" in text and "<strong>" in text


def test_cli_report_and_bad_run_dirs(tmp_path, capsys):
    root = make_store(tmp_path / "small", spec_methods=SPEC_METHODS[:3], noise=[0.0])
    assert main(["report", str(root)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {root / 'report.md'}"
    md = (root / "report.md").read_text()
    # absent data: figures and tables skipped cleanly, and said so
    for name in ("rho_trajectories", "sam_fraction", "samar_lambda", "anytime", "cd_settings", "cd_rho0"):
        assert not (root / "figures" / f"{name}.png").exists()
        assert f"Figure skipped: {name}" in md
    assert "Robustness to ρ₀" not in md and "Not shown: ρ₀-robustness table" in md
    assert "Hypergradient signal-to-noise" not in md and "Not shown: hypergradient signal-to-noise table" in md
    assert main(["report", str(root), "--format", "html"]) == 0
    assert (root / "report.html").exists()
    capsys.readouterr()

    empty = tmp_path / "empty"
    empty.mkdir()
    meta_only = tmp_path / "meta_only"
    meta_only.mkdir()
    (meta_only / "metadata.json").write_text(json.dumps({"spec": {"name": "x"}}))
    no_meta = tmp_path / "no_meta"
    no_meta.mkdir()
    (root / "runs.parquet").rename(no_meta / "runs.parquet")
    for bad in (empty, meta_only, no_meta, tmp_path / "nope", root / "metadata.json"):
        with pytest.raises(ValueError, match=r"^RUN_DIR: .*; allowed: a directory written by hpo-bench run$") as err:
            write_report(bad)
        assert "\n" not in str(err.value)
        assert main(["report", str(bad)]) == 2
        err_text = capsys.readouterr().err
        assert err_text.startswith("hpo-bench: error: RUN_DIR: ") and err_text.count("\n") == 1
    assert not (empty / "report.md").exists() and not (empty / "figures").exists()


def test_anytime_curves_carry_their_setting(tmp_path):
    from hpo_bench.cli import main as cli_main
    from tests.conftest import ROOT

    text = (ROOT / "experiments" / "tiny.toml").read_text().replace("epochs = 2", "epochs = 1")
    text += '\n[vary]\n"data.label_noise" = [0.0, 0.5]\n\n[[methods]]\nlabel = "Grid"\nstrategy = "sam"\n' \
            '[methods.search]\ngrid = [0.01, 0.1]\n'
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    assert cli_main(["run", str(spec), "--out", str(tmp_path / "o"), "--no-progress", "--no-report"]) == 0
    (run_dir,) = [p for p in (tmp_path / "o").iterdir() if p.is_dir()]
    anytime = pd.read_parquet(run_dir / "anytime.parquet")
    assert sorted(anytime["setting.data.label_noise"].unique()) == [0.0, 0.5]
    report = write_report(run_dir).read_text()
    assert "matched to settings by order" not in report
    assert (run_dir / "figures" / "anytime.png").stat().st_size > 0


def _run_dir_row(md: str) -> str:
    (row,) = [line for line in md.splitlines() if line.startswith("| run directory |")]
    return row


def test_run_directory_row_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    root = make_store(tmp_path / "w" / "runs" / "x-1", spec_methods=SPEC_METHODS[:3], noise=[0.0])
    monkeypatch.chdir(tmp_path / "w")
    assert _run_dir_row(write_report("runs/x-1").read_text()) == "| run directory | `runs/x-1` |"
    assert _run_dir_row(write_report(root.resolve()).read_text()) == "| run directory | `runs/x-1` |"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not under the working directory: the path as given
    assert _run_dir_row(write_report(root).read_text()) == f"| run directory | `{root}` |"
    assert _run_dir_row(write_report("../w/runs/x-1").read_text()) == "| run directory | `../w/runs/x-1` |"


def test_a_run_in_progress_is_read_from_trials_through_the_store(tmp_path):
    """Without runs.parquet / curves.parquet the report reads trials/ (ResultsStore.finished_rows and
    read_curves), gives the same tables and curve figures, and writes nothing else."""
    full = make_store(tmp_path / "full", spec_methods=SPEC_METHODS[:3], noise=[0.0])
    partial = make_store(tmp_path / "partial", spec_methods=SPEC_METHODS[:3], noise=[0.0])
    store = ResultsStore(partial)
    runs, curves = pd.read_parquet(partial / "runs.parquet"), pd.read_parquet(partial / "curves.parquet")
    for row in runs.to_dict("records"):
        store.write_run(row, curves[curves["run_id"] == row["run_id"]])
    (partial / "runs.parquet").unlink()
    (partial / "curves.parquet").unlink()
    (store.trials / ".half-written.json.tmp").write_text("{")
    (store.trials / "torn.json").write_text("{not json")
    before = sorted(p.relative_to(partial) for p in partial.rglob("*"))

    rows = store.finished_rows()
    assert len(rows) == len(runs) and set(rows["run_id"]) == set(runs["run_id"])
    step = store.read_curves("step", ["rho"])
    assert set(step["scope"]) <= {"step"} and set(step["metric"]) <= {"rho"}
    assert sorted(p.relative_to(partial) for p in partial.rglob("*")) == before  # the readers write nothing

    md_full, md_partial = write_report(full).read_text(), write_report(partial).read_text()
    assert f"runs.parquet is absent: the report reads the {len(runs)} finished trials in trials/." in md_partial
    assert section(md_partial, "1. Test accuracy") == section(md_full, "1. Test accuracy")
    assert (partial / "figures" / "train_loss.png").stat().st_size > 0
    after = sorted(p.relative_to(partial) for p in partial.rglob("*") if p.name != "report.md"
                   and "figures" not in p.parts)
    assert after == before


def test_every_bad_run_dir_is_one_line_naming_run_dir(tmp_path):
    cases = {}
    for name in ("malformed_meta", "list_meta", "meta_dir", "torn_runs", "few_columns", "torn_searches"):
        cases[name] = make_store(tmp_path / name, spec_methods=SPEC_METHODS[:2], noise=[0.0])
    (cases["malformed_meta"] / "metadata.json").write_text("{not json")
    (cases["list_meta"] / "metadata.json").write_text("[1, 2]")
    (cases["meta_dir"] / "metadata.json").unlink()
    (cases["meta_dir"] / "metadata.json").mkdir()
    (cases["torn_runs"] / "runs.parquet").write_bytes(b"PAR1 torn")
    pd.DataFrame({"run_id": ["a"], "method": ["m"]}).to_parquet(cases["few_columns"] / "runs.parquet")
    (cases["torn_searches"] / "searches.parquet").write_bytes(b"not parquet")
    expected = {"malformed_meta": "has a malformed metadata.json", "list_meta": "has a malformed metadata.json",
                "meta_dir": "has no metadata.json", "torn_runs": "has an unreadable runs.parquet (",
                "few_columns": "runs.parquet lacks columns strategy, status, rho0, seed, test_acc",
                "torn_searches": "has an unreadable searches.parquet ("}
    for name, root in cases.items():
        with pytest.raises(ValueError, match=r"^RUN_DIR: .*; allowed: a directory written by hpo-bench run$") as err:
            write_report(root)
        assert str(err.value).startswith(f"RUN_DIR: {str(root)!r} {expected[name]}") and "\n" not in str(err.value)
        assert not (root / "report.md").exists()


def _step_rows(rid, steps, values, metric="dM_dnu") -> list:
    return [(rid, "step", 1, int(t), metric, float(v)) for t, v in zip(steps, values)]


def test_dnu_snr_on_known_traces():
    """SNR = |mean| / sd (ddof 1) of each run's updates: NaN steps are not updates, thirds split the run's
    training steps; groups: mean over seeds with a t interval."""
    rng = np.random.default_rng(3)
    first, middle, last = rng.normal(0.5, 0.25, 100), rng.normal(0.2, 1.0, 100), rng.normal(-0.05, 1.0, 100)
    a = np.concatenate([first, middle, last])
    a_traced = np.where(np.arange(300) % 4 == 3, np.nan, a)  # every 4th step without an update
    b = rng.normal(-0.3, 0.6, 30)
    b_traced = np.full(300, np.nan)
    b_traced[4::10] = b  # updated every 10 steps, NaN between
    rows = (_step_rows("a", range(300), a_traced) + _step_rows("b", range(300), b_traced)
            + _step_rows("c", range(300), [np.nan] * 299 + [0.1]) + _step_rows("a", range(300), a, metric="rho")
            + _step_rows("other", range(10), range(10)))
    step = pd.DataFrame(rows, columns=["run_id", "scope", "epoch", "step", "metric", "value"])
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "method": ["m", "m", "n"], "seed": [0, 1, 0],
                         "steps": [300.0, 300.0, np.nan]})
    assert len(dnu_updates(step)) == 225 + 30 + 1 + 10

    def snr(x):
        return abs(np.mean(x)) / np.std(x, ddof=1)

    kept = ~np.isnan(a_traced)
    per_run = dnu_snr_runs(step, runs).set_index("run_id")
    assert set(per_run.index) == {"a", "b", "c"} and per_run.loc["a", "n_updates"] == 225
    assert per_run.loc["a", "snr"] == pytest.approx(snr(a[kept]))
    assert per_run.loc["a", "frac_pos"] == pytest.approx(np.mean(a[kept] > 0))
    assert per_run.loc["a", "snr_first"] == pytest.approx(snr(first[kept[:100]]))
    assert per_run.loc["a", "snr_last"] == pytest.approx(snr(last[kept[200:]]))
    assert per_run.loc["a", "snr_first"] > 1.5 and per_run.loc["a", "snr_last"] < 0.2  # the signal fades
    assert per_run.loc["b", "n_updates"] == 30 and per_run.loc["b", "snr"] == pytest.approx(snr(b))
    assert per_run.loc["b", "frac_pos"] == pytest.approx(np.mean(b > 0))
    # one update: no SNR; its training length is its last traced step + 1 (no `steps`)
    assert per_run.loc["c", "n_updates"] == 1 and per_run.loc["c", "frac_pos"] == 1.0
    assert per_run.loc["c", ["snr", "snr_first", "snr_last"]].isna().all()

    table = dnu_snr(step, runs).set_index("method")
    m = table.loc["m"]
    pair = per_run.loc[["a", "b"], "snr"].to_numpy()
    half = sps.t.ppf(0.975, 1) * np.std(pair, ddof=1) / np.sqrt(2)
    assert m["runs"] == 2 and m["updates"] == pytest.approx((225 + 30) / 2)
    assert m["snr"] == pytest.approx(pair.mean())
    assert (m["snr_low"], m["snr_high"]) == pytest.approx((pair.mean() - half, pair.mean() + half))
    assert table.loc["n", "runs"] == 1 and np.isnan(table.loc["n", "snr"]) and table.loc["n", "frac_pos"] == 1.0


def test_snr_table_of_the_report(store):
    _, md = store
    text = section(md, "11. Hypergradient signal-to-noise")
    assert "dM/dν < 0 raises ρ" in text
    rows = {r["method"]: r for r in parse_tables(text)["data.label_noise = 0.2"]}
    assert set(rows) == {f"{m} (ρ₀={r:g})" for m in ("LETS-SAM", "LETS-SAM gap") for r in SPEC_METHODS[4]["rho"]}
    values = np.array([lets_dnu(t) for t in range(1, EPOCHS * STEPS_PER_EPOCH + 1)])
    row = rows["LETS-SAM (ρ₀=0.05)"]  # every seed traces the same values: intervals of zero width
    assert row["runs"] == "3" and row["updates per run"] == str(EPOCHS * STEPS_PER_EPOCH)
    snr = abs(values.mean()) / values.std(ddof=1)
    assert row["SNR [95% CI]"] == f"{snr:.3f} [{snr:.3f}, {snr:.3f}]"
    pos = 100 * np.mean(values > 0)
    assert row["dM/dν > 0 (%) [95% CI]"] == f"{pos:.1f} [{pos:.1f}, {pos:.1f}]"


def test_rho_figure_draws_each_seed_under_the_mean(tmp_path):
    """One panel per method: a thin, semi-transparent line per seed and ρ₀, and one thick mean line per ρ₀ in
    the same colour."""
    root = make_store(tmp_path / "rho", spec_methods=[SPEC_METHODS[4]], noise=[0.0])
    res = load_results(root)
    settings, entries = build_entries(res)
    fig = fig_rho(res, settings, entries, Curves(res))
    ax = fig.axes[0]
    lines = ax.get_lines()
    rho0s = SPEC_METHODS[4]["rho"]
    assert len(lines) == len(SEEDS) * len(rho0s) + len(rho0s)
    means = {line.get_label(): line for line in lines if not line.get_label().startswith("_")}
    assert sorted(means) == [f"ρ₀={r:g}" for r in rho0s]
    thin = [line for line in lines if line.get_label().startswith("_")]
    assert all(line.get_linewidth() < 1 and line.get_alpha() < 1 for line in thin)
    assert all(line.get_linewidth() > 1 and line.get_alpha() is None for line in means.values())
    for r in rho0s:
        colour = means[f"ρ₀={r:g}"].get_color()
        assert sum(tuple(line.get_color()) == tuple(colour) for line in thin) == len(SEEDS)
