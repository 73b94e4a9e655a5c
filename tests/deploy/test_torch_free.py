"""Every module of the deployment wing imports with torch and the rest of the train extra blocked (test_install
classifies in a real install without them)."""

import subprocess
import sys

BLOCKED = ("torch", "torchvision", "onnxsim", "matplotlib", "tqdm")

IMPORT_ALL_WITH_TRAIN_EXTRA_BLOCKED = f"""
import importlib, pkgutil, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"blocked: {{name}}")

sys.meta_path.insert(0, Blocked())
import vggdeploy.deploy as wing
names = [m.name for m in pkgutil.walk_packages(wing.__path__, "vggdeploy.deploy.")]
for name in names:
    importlib.import_module(name)
print(sorted(names))
print(sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
"""


def test_every_deploy_module_imports_without_torch():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_WITH_TRAIN_EXTRA_BLOCKED], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    imported, blocked = result.stdout.splitlines()
    assert "vggdeploy.deploy.session" in imported and "vggdeploy.deploy.classify" in imported
    assert blocked == "[]"


def test_the_block_would_catch_a_torch_import():
    planted = IMPORT_ALL_WITH_TRAIN_EXTRA_BLOCKED.replace(
        "import vggdeploy.deploy as wing", "import vggdeploy.model.vgg\nimport vggdeploy.deploy as wing"
    )
    result = subprocess.run([sys.executable, "-c", planted], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "ImportError: blocked: torch" in result.stderr
