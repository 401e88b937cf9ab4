"""Hostile input, from the table in hostile_cases.py: each case is refused with an error that starts with the form
label of its field and carries no internal exception text; the app keeps serving. First in process (fast), then
through the /compare API of a running app (slow)."""

from __future__ import annotations

import pytest
from hostile_cases import CASES, GOOD
from served_app import serve

from negprompt.errors import InputError

INTERNAL = ("Traceback", "Errno", "AttributeError", "TypeError", "KeyError", "IndexError", "OverflowError",
            "ValueError", "Exception", "object at 0x")
IDS = [name for name, _, _ in CASES]


def test_the_table_is_large_enough():
    assert len(CASES) >= 200, f"The hostile-input table must hold at least 200 cases, not {len(CASES)}."


@pytest.fixture(scope="module")
def views():
    from served_app import SERVED_OPTIONS

    from negprompt.app.settings import AppSettings
    from negprompt.app.views import Views
    from negprompt.loading import EMBEDDED_NAME

    return Views(AppSettings(model=EMBEDDED_NAME, models=(EMBEDDED_NAME,), **SERVED_OPTIONS))


def test_every_case_is_refused_in_process_naming_its_field(views):
    from negprompt.app.form import field_label, form_from_api

    wrong = []
    for name, overrides, label in CASES:
        try:
            views.request(form_from_api(**{**GOOD, **overrides}))
        except InputError as error:
            message = str(error)
            if field_label(error.argument) != label:
                wrong.append(f"{name}: concerns {field_label(error.argument)!r}, not {label!r}: {message[:100]}")
            elif any(word in message for word in INTERNAL) or len(message) > 600:
                wrong.append(f"{name}: the message leaks internal text or echoes the input: {message[:100]}")
        else:
            wrong.append(f"{name}: accepted")
    assert not wrong, "Every hostile input must be refused naming its field:\n" + "\n".join(wrong)


NAMES = ["prompt", "negative_prompts", "seed", "steps", "guidance_scale", "size", "model", "rows", "scheduler"]


def call_api(url: str, args: dict) -> tuple[str, object]:
    """POST /compare the way any HTTP client can (JSON allows NaN and huge integers, which gradio_client's encoder
    refuses), then read its event stream: ("complete", data) or ("error", message)."""
    import json

    import httpx

    body = json.dumps({"data": [args[name] for name in NAMES]})
    event = httpx.post(url + "gradio_api/call/compare", content=body, timeout=60,
                       headers={"content-type": "application/json"}).json()
    text = httpx.get(url + f"gradio_api/call/compare/{event['event_id']}", timeout=120).text
    kind = text.split("event: ")[-1].split("\n")[0]
    data = json.loads(text.split("data: ")[-1].strip())
    return kind, (data["error"] if kind == "error" and isinstance(data, dict) else data)


@pytest.fixture(scope="module")
def served_url(tmp_path_factory):
    with serve(tmp_path_factory) as (url, model):
        yield url, model


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides, label", CASES, ids=IDS)
def test_refused_through_the_api_naming_the_field(served_url, name, overrides, label):
    url, model = served_url
    kind, message = call_api(url, {**GOOD, "model": model, **overrides})
    assert kind == "error", f"{name}: must be refused, got {kind}"
    assert isinstance(message, str) and message.startswith(f"{label}:"), \
        f"{name}: the error must start with {label!r}: {str(message)[:200]}"
    assert not any(word in message for word in INTERNAL), f"{name}: internal text leaked: {message[:200]}"


@pytest.mark.slow
def test_the_app_still_serves_after_the_table(served_url):
    url, model = served_url
    kind, (gallery, manifest) = call_api(url, {**GOOD, "model": model, "negative_prompts": ["hat"], "steps": 1})
    assert kind == "complete" and len(gallery) == 2 and manifest["cells"][1]["negative_prompt"] == "hat"
