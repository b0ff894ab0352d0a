import pytest

from distill.config import ConfigError, StudentConfig, TeacherConfig
from distill.teachers import TEACHERS


def test_teacher_names_are_the_registry():
    for name in TEACHERS:
        assert TeacherConfig(name=name).name == name
    with pytest.raises(ConfigError, match="teacher.name='glip9' is not one of simulated, grounding_dino"):
        TeacherConfig(name="glip9")


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: TeacherConfig(prompt_template="{category}"), "teacher.prompt_template"),
        (lambda: StudentConfig(width=0), "student.width"),
    ],
)
def test_section_checks_name_the_key(make, key):
    with pytest.raises(ConfigError, match=key):
        make()
