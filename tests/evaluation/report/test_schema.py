"""report.json as a type: the JSON round trip, NaN as null, unknown keys refused."""

from __future__ import annotations

import json

import pydantic
import pytest

from potstill.evaluation.report import (
    SCHEMA_VERSION,
    Agreement,
    ModelEntry,
    Report,
    build_report,
    write_report,
)
from tests.evaluation.report.numbers import DATA, RECIPE, RUN, three_models


def test_round_trip_through_json_with_nan_as_null(tmp_path):
    models = three_models()
    models["student"]["perplexity"] = float("inf")
    models["baseline"]["agreement"]["kl"] = float("nan")
    recipe = {**RECIPE, "teacher_signal": {"tail_mass": float("nan"), "k": 64}}
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=recipe, models=models)
    assert report.models["student"].perplexity is None
    assert report.models["baseline"].agreement == Agreement(top1=0.31, kl=None)
    assert report.recipe["teacher_signal"] == {"tail_mass": None, "k": 64}

    path = write_report(tmp_path, report)["report.json"]
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    raw = json.loads(text)
    assert raw["models"]["student"]["perplexity"] is None
    assert raw["models"]["baseline"]["agreement"] == {"top1": 0.31, "kl": None}
    assert raw["recipe"]["teacher_signal"]["tail_mass"] is None

    loaded = Report.load(path)
    assert loaded == report
    assert Report.model_validate_json(text) == report
    assert list(loaded.models) == ["teacher", "student", "baseline"]
    assert loaded.models["student"].agreement == Agreement(top1=0.52, kl=0.7)


def test_schema_version_is_written_first(tmp_path):
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    raw = json.loads(write_report(tmp_path, report)["report.json"].read_text())
    assert SCHEMA_VERSION == 3
    assert next(iter(raw)) == "schema_version" and raw["schema_version"] == 3
    assert list(raw) == [
        "schema_version",
        "potstill_version",
        "created",
        "kind",
        "run",
        "data",
        "recipe",
        "models",
        "summary",
        "budget",
        "seeds",
        "break_even",
        "samples",
    ]
    # The typed sections carry every field, null where unknown.
    assert raw["models"]["teacher"]["agreement"] is None
    assert raw["models"]["teacher"]["accuracy"] is None
    assert set(raw["models"]["teacher"]) == set(ModelEntry.model_fields)
    assert raw["summary"]["gap_closed"] == pytest.approx(0.5)


def test_non_finite_floats_become_none_on_any_construction():
    entry = ModelEntry(perplexity=float("nan"), loss=float("-inf"), tokens_per_second=3.5)
    assert (entry.perplexity, entry.loss, entry.tokens_per_second) == (None, None, 3.5)
    assert Agreement(top1=float("inf"), kl=0.25) == Agreement(top1=None, kl=0.25)
    assert json.loads(entry.model_dump_json())["perplexity"] is None


@pytest.mark.parametrize(
    ("model", "data", "misspelt"),
    [
        (ModelEntry, {"params": 5, "perplexty": 3.0}, "perplexty"),
        (ModelEntry, {"agreement": {"top_1": 0.5}}, "top_1"),
        (Agreement, {"top1": 0.5, "KL": 0.1}, "KL"),
    ],
)
def test_unknown_key_in_a_model_entry_is_refused(model, data, misspelt):
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted") as error:
        model.model_validate(data)
    assert misspelt in str(error.value)


def test_loading_a_report_with_a_misspelt_key_fails(tmp_path):
    report = build_report(kind="lm", run=RUN, data=DATA, recipe=RECIPE, models=three_models())
    raw = json.loads(report.model_dump_json())
    raw["models"]["student"]["tokens_per_sec"] = raw["models"]["student"].pop("tokens_per_second")
    path = tmp_path / "report.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(pydantic.ValidationError, match="tokens_per_sec"):
        Report.load(path)


def test_recipe_is_free_but_json_ready():
    recipe = {"anything": {"nested": [1, 2.5, "x"]}, "loss": [{"loss": "jsd", "beta": 0.5}]}
    report = build_report(kind="lm", run={}, data={}, recipe=recipe, models={})
    assert report.recipe == recipe


def test_models_keep_roles_first_when_built_directly():
    report = Report(
        potstill_version="0",
        created="2025-01-01T00:00:00+00:00",
        kind="lm",
        models={
            "zeta": ModelEntry(),
            "baseline": ModelEntry(),
            "alpha": ModelEntry(),
            "teacher": ModelEntry(),
        },
        summary={},
    )
    assert list(report.models) == ["teacher", "baseline", "zeta", "alpha"]


def test_wrong_types_are_refused():
    with pytest.raises(pydantic.ValidationError, match="params"):
        ModelEntry(params="many")
    with pytest.raises(pydantic.ValidationError, match="summary"):
        Report(potstill_version="0", created="now", kind="lm")  # the builder fills it
