import pytest

from cmpt.profiles import PROFILE_FIELDS, PROFILES, ProfileError, get_profile, parse_value


def test_three_profiles_exist_and_validate():
    assert set(PROFILES) == {"smoke", "default", "paper"}
    for profile in PROFILES.values():
        profile.validate()
    assert PROFILES["paper"].prompt_length == 100 and PROFILES["paper"].image_size == 224


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ProfileError, match="valid profiles: smoke, default, paper"):
        get_profile("laptop")


def test_unknown_parameter_lists_valid_names():
    with pytest.raises(ProfileError, match="unknown profile parameter.*epochz.*valid names:.*target_epochs"):
        get_profile("smoke", {"epochz": 3})


def test_overrides_are_coerced_and_checked():
    cfg = get_profile("smoke", {"image_size": "48", "seeds": "[1, 2]", "image_mean": [0, 0, 0]})
    assert cfg.image_size == 48 and cfg.seeds == (1, 2) and cfg.image_mean == (0.0, 0.0, 0.0)
    assert get_profile("smoke", seeds=7).seeds == (7,)
    with pytest.raises(ProfileError, match="image_size must be int"):
        get_profile("smoke", {"image_size": "big"})
    with pytest.raises(ProfileError, match="prompt_layout must be"):
        get_profile("smoke", {"prompt_layout": "middle"})
    with pytest.raises(ProfileError, match="n_train must be positive"):
        get_profile("smoke", {"n_train": 0})


def test_profile_is_frozen_and_name_not_overridable():
    cfg = get_profile("smoke")
    with pytest.raises(Exception):
        cfg.image_size = 3  # type: ignore[misc]
    assert "name" not in PROFILE_FIELDS


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("[1, 2]", [1, 2]), ("after_cls", "after_cls"),
                                        ("True", True)])
def test_parse_value(text, value):
    assert parse_value(text) == value
