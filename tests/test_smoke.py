from tests.conftest import GLOBAL_KEY


def test_create_then_state(api):
    body, token = api.create_instance("shop1")
    response = api.request("GET", "/instance/connectionState/shop1", token)
    assert response.status_code == 200
    assert response.get_json() == {"instance": {"instanceName": "shop1", "state": "open"}}
    assert api.request("GET", "/instance/fetchInstances", GLOBAL_KEY).get_json()[0]["name"] == "shop1"
