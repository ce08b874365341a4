import pytest

from potstill.config import DEFAULT_STUDENT_LAYERS, load_recipe
from potstill.util.errors import PotstillError


def test_default_recipe_is_complete():
    recipe = load_recipe()
    assert recipe.teacher == "bundled:smollm2-135m-instruct"
    assert recipe.student.from_teacher.layers == DEFAULT_STUDENT_LAYERS
    assert recipe.needs_teacher_logits


def test_overrides_reach_nested_keys_and_parse_yaml_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntrain: {steps: 7}\n")
    recipe = load_recipe(path, ["train.lr=1e-3", "student.from_teacher.layers=[0,2]", "data.path="])
    assert (recipe.name, recipe.train.steps, recipe.train.lr) == ("x", 7, 1e-3)
    assert recipe.student.from_teacher.layers == [0, 2]
    assert recipe.data.path is None


def test_loss_terms_from_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("loss:\n  - {loss: jsd, weight: 1.0, temperature: 2.0, beta: 0.3}\n")
    (term,) = load_recipe(path).loss
    assert (term.loss, term.temperature, term.beta) == ("jsd", 2.0, 0.3)


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe(None, ["train.steps=3", "student.adapter=pissa"])
    path = tmp_path / "config.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(path) == recipe


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.stepz=3"], "unknown key train.stepz; did you mean train.steps?"),
        (["studnet.adapter=lora"], "did you mean student?"),
        (["train.steps=many"], "train.steps = 'many'"),
        (["student.adapter=qlora"], "student.adapter = 'qlora' is not allowed"),
        (["loss=[{loss: kl}]"], "loss.0.loss = 'kl' is not allowed"),
        (["loss=[{loss: tvd, beta: 0.5}]"], "beta applies only to jsd"),
        (["loss=[{loss: jsd, beta: 0}]"], "loss.0: loss term jsd: beta = 0 must be in (0, 1)"),
        (["loss=[{loss: skew_kl, gamma: 1}]"], "gamma is not a parameter"),
        (["name=../../x"], "must be a plain folder name"),
        (["name=/tmp/x"], "must be a plain folder name"),
        (["name=.."], "must be a plain folder name"),
        (["device=gpu"], "give auto, cpu, cuda, cuda:N or mps"),
        (["train.precision=fp8"], "train.precision = 'fp8' is not allowed"),
        (["stages=[distil]"], "stages.0 = 'distil' is not allowed"),
        (["loss=[{loss: cross_entropy, weight: 0}]"], "every term has weight 0"),
        (["student.model=x", "student.fresh={}"], "only one of model, from_teacher, fresh"),
        (["steps"], "is not key=value"),
        (["task.labels=[a,"], "the value is not valid YAML"),
    ],
)
def test_user_errors_name_the_key_and_the_fix(overrides, expected):
    with pytest.raises(PotstillError) as info:
        load_recipe(None, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(PotstillError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3\n")
    with pytest.raises(PotstillError, match="not valid YAML"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(PotstillError, match="mapping"):
        load_recipe(listy)


def test_loss_names_come_from_the_registry():
    from potstill.losses import REGISTRY

    for name, spec in REGISTRY.items():
        # Hidden and attention terms need the teacher's insides: it runs live.
        # A sampled cache (the default's) serves forward KL only: others read a top-k cache.
        live = ["teach.samples=0", "teach.top_k=64"]
        if spec.kind != "tokens":
            live = ["teach.enabled=false"]
        assert load_recipe(None, [f"loss=[{{loss: {name}}}]", *live]).loss[0].loss == name


def test_recipe_terms_are_the_losses_terms():
    top_k = ["teach.samples=0", "teach.top_k=64"]  # jsd reads a top-k cache
    recipe = load_recipe(None, ["loss=[{loss: jsd, temperature: 2, beta: 0.3}]", *top_k])
    (term,) = recipe.terms
    assert (term.loss, term.temperature, dict(term.params)) == ("jsd", 2.0, {"beta": 0.3})
    assert recipe.loss[0].alpha is None  # a parameter another loss takes reads None


def test_a_recipe_file_gets_the_embedded_defaults_tuned_settings(tmp_path):
    """A recipe naming only name and data.path trains as `potstill run data.path=...`
    does: the same loss, optimiser and teacher-cache settings; only the embedded
    default's time budget is its own."""
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndata: {path: notes.txt}\n")
    from_file = load_recipe(path)
    embedded = load_recipe(None, ["name=mine", "data.path=notes.txt"])
    assert embedded.budget_minutes is not None and from_file.budget_minutes is None
    assert from_file == embedded.model_copy(update={"budget_minutes": None})
    assert [(t.loss, t.weight, t.temperature, t.layers) for t in from_file.loss] == [
        ("forward_kl", 0.5, 1.0, None),
        ("cross_entropy", 0.5, 1.0, None),
        ("hidden_mse", 1.0, 1.0, "auto"),
    ]
    assert (from_file.train.lr, from_file.train.adam_eps) == (2.0e-3, 1.0e-6)
    assert (from_file.teach.top_k, from_file.teach.samples) == (0, 192)


def test_the_resolved_defaults_are_written_into_config_yaml(tmp_path):
    recipe = load_recipe({"name": "mine", "loss": [{"loss": "reverse_kl"}]})
    path = tmp_path / "config.yaml"
    path.write_text(recipe.to_yaml())
    text = path.read_text()
    assert "top_k: 64" in text and "samples: 0" in text  # the rule, made visible
    assert load_recipe(path) == recipe


@pytest.mark.parametrize(
    ("raw", "cache"),
    [
        ({}, (0, 192)),  # forward KL at one temperature: the unbiased sampled cache
        ({"loss": [{"loss": "jsd", "beta": 0.5}]}, (64, 0)),  # a sampled cache can't serve jsd
        ({"loss": [{"loss": "forward_kl", "temperature": 2.0}, {"loss": "reverse_kl"}]}, (64, 0)),
        ({"loss": [{"loss": "cross_entropy"}]}, (0, 192)),  # nothing to teach; left as is
        ({"teach": {"top_k": 32}}, (32, 0)),  # naming top_k alone asks for top-k
        ({"teach": {"top_k": 8, "samples": 16}}, (8, 16)),  # named: kept
    ],
)
def test_the_cache_follows_the_loss_terms_unless_the_recipe_names_it(raw, cache):
    recipe = load_recipe({"name": "x", **raw})
    assert (recipe.teach.top_k, recipe.teach.samples) == cache


@pytest.mark.parametrize(
    ("kind", "first"),
    [("lm", "forward_kl"), ("classify", "forward_kl"), ("reason", "cross_entropy")],
)
def test_the_default_loss_is_chosen_by_task_kind(kind, first):
    raw = {"task": {"kind": kind, "labels": ["a", "b"] if kind == "classify" else []}}
    recipe = load_recipe(raw)
    assert recipe.loss[0].loss == first
    assert any(t.loss == "hidden_mse" for t in recipe.loss) == (kind == "lm")


def test_a_kind_other_than_lm_gets_its_own_train_settings_under_the_recipes():
    """A classifier's full fine-tune at the lm's lr 2e-3 breaks: classify recipes get
    DEFAULT_TRAIN's settings for the keys their train section leaves out."""
    task = {"kind": "classify", "labels": ["a", "b"]}
    train = load_recipe({"task": task}).train
    assert (train.steps, train.batch_size, train.lr, train.warmup) == (150, 8, 3e-4, 5)
    train = load_recipe({"task": task, "train": {"lr": 1e-4, "seed": 3}}).train
    assert (train.steps, train.lr, train.seed) == (150, 1e-4, 3)
    assert load_recipe({}).train.lr == 2e-3  # lm: TrainConfig's own, the default run's
    train = load_recipe({"task": {"kind": "reason"}}).train
    assert (train.steps, train.lr) == (40, 1e-4)


def test_task_kind_is_the_one_switch_for_context_distillation():
    context = {"system": "talk like a pirate"}
    recipe = load_recipe({"task": {"kind": "context"}, "context": context})
    assert [t.loss for t in recipe.loss] == ["forward_kl"]
    with pytest.raises(PotstillError, match=r"context is set but task\.kind is lm"):
        load_recipe({"context": context})
    with pytest.raises(PotstillError, match=r"task\.kind is context but the recipe has no context"):
        load_recipe({"task": {"kind": "context"}})


@pytest.mark.parametrize("verb", ["teach", "distill"])
def test_teach_and_distill_refuse_another_kind_in_one_line(verb):
    import potstill

    recipe = {"task": {"kind": "classify", "labels": ["a", "b"]}}
    with pytest.raises(PotstillError, match=rf"potstill {verb} is for task\.kind lm"):
        getattr(potstill, verb)(recipe)


def test_a_budget_is_kept_by_every_kind():
    for kind in ("classify", "reason", "context"):
        recipe = {"task": {"kind": kind, "labels": ["a", "b"]}, "budget_minutes": 15}
        if kind == "context":
            recipe["context"] = {"system": "Speak like a pirate."}
        assert load_recipe(recipe).budget_minutes == 15


@pytest.mark.parametrize("kind", ["classify", "reason"])
@pytest.mark.parametrize(
    "override", ["student.qat.weights=int4", "eval.quantize=[int8]"], ids=["qat", "ptq"]
)
def test_quantization_keys_are_refused_where_the_flow_would_ignore_them(kind, override):
    # Only the lm flow quantizes; a classify or reason run used to drop the keys silently.
    key = override.split("=")[0].rsplit(".", 1)[0] if "qat" in override else "eval.quantize"
    with pytest.raises(PotstillError, match=rf"{key} quantizes language-model students.*drop"):
        load_recipe(None, [f"task.kind={kind}", "task.labels=[good,bad]", override])
    assert load_recipe(None, [override]).task.kind == "lm"


def test_student_layers_are_refused_where_the_flow_would_ignore_them():
    task = {"kind": "classify", "labels": ["a", "b"]}
    student = {"model": "bundled:all-minilm-l6-v2", "layers": [0, 1]}
    with pytest.raises(PotstillError, match=r"drop student\.layers") as error:
        load_recipe({"task": task, "student": student})
    assert "\n" not in str(error.value)
    lm = load_recipe({"student": {"model": "bundled:smollm2-135m-instruct", "layers": [0, 29]}})
    assert lm.student.layers == [0, 29]
