"""Values no instance or number can have: rejected with 400 or not found (404), never a 500."""

import pytest

from tests.conftest import GLOBAL_KEY

ARABIC_INDIC_DIGITS = "١٢٣٤٥٦٧٨٩٠"


@pytest.mark.parametrize("query", ["instanceName=%00", "instanceId=a%00b", "instanceName=bad%20name", "instanceId=x"])
def test_fetch_filter_matching_nothing(api, query):
    api.create_instance("shop1")
    response = api.request("GET", f"/instance/fetchInstances?{query}", GLOBAL_KEY)
    assert response.status_code == 404
    assert response.get_json()["message"].startswith("Instance ")


def test_fetch_filter_by_id(api):
    body, _ = api.create_instance("shop1")
    instance_id = body["instance"]["instanceId"]
    response = api.request("GET", f"/instance/fetchInstances?instanceId={instance_id}", GLOBAL_KEY)
    assert response.status_code == 200
    assert [instance["name"] for instance in response.get_json()] == ["shop1"]


def test_create_number_needs_ascii_digits(api):
    response = api.create("shop1", number=ARABIC_INDIC_DIGITS)
    assert response.status_code == 400
    assert "number" in response.get_json()["errors"]


@pytest.mark.parametrize("number", [ARABIC_INDIC_DIGITS, f"{ARABIC_INDIC_DIGITS}@s.whatsapp.net"])
def test_send_text_number_needs_ascii_digits(api, number):
    _, token = api.create_instance("shop1")
    response = api.request("POST", "/message/sendText/shop1", token, json={"number": number, "text": "hello"})
    assert response.status_code == 400
    assert "number" in response.get_json()["errors"]
