"""Model cards: written through huggingface_hub, the base model named only when it is a Hub id."""

from huggingface_hub import ModelCard

from hf_frozen.utils.hub import build_model_card, hub_id


def test_hub_ids_and_local_paths(tmp_path):
    assert hub_id("google-t5/t5-small") == "google-t5/t5-small"
    assert hub_id(str(tmp_path)) is None  # an existing folder
    assert hub_id("/no/such/folder") is None and hub_id("../relative/path") is None and hub_id(None) is None


def test_card_metadata_parses_back():
    card = ModelCard(build_model_card("google-t5/t5-small", ["frozen-decoder"], "text2text-generation", "# Title"))
    assert card.data.library_name == "hf-frozen" and card.data.base_model == "google-t5/t5-small"
    assert card.data.pipeline_tag == "text2text-generation"
    assert card.data.tags == ["hf-frozen", "frozen-decoder"]
    assert card.text.strip() == "# Title"
    local = ModelCard(build_model_card("/tmp/my-model", [], "text-classification", "x"))
    assert local.data.base_model is None
