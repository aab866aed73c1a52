import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small procedural world shared by the training tests (generated once per session)."""
    from probret.train.world import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, videos=40, seed=7, resolution=(32, 32), frames=8, fps=4)
    return root
