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


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    with serve(tmp_path_factory) as (url, model):
        yield Client(url, verbose=False), model


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides, label", CASES, ids=IDS)
def test_refused_through_the_api_naming_the_field(client, name, overrides, label):
    from gradio_client.exceptions import AppError

    api, model = client
    with pytest.raises(AppError) as error:
        api.predict(**{**GOOD, "model": model, **overrides}, api_name="/compare")
    message = str(error.value)
    assert message.startswith(f"{label}:"), f"{name}: the error must start with {label!r}: {message[:200]}"
    assert not any(word in message for word in INTERNAL), f"{name}: internal text leaked: {message[:200]}"


@pytest.mark.slow
def test_the_app_still_serves_after_the_table(client):
    api, model = client
    gallery, manifest = api.predict(**{**GOOD, "model": model, "negative_prompts": ["hat"], "steps": 1},
                                    api_name="/compare")
    assert len(gallery) == 2 and manifest["cells"][1]["negative_prompt"] == "hat"
