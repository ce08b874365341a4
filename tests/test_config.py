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
