"""Where an installed fastmlp keeps its C++ core, for CMake projects that embed it (like pybind11's).

    cmake -S . -B build -Dfastmlp_DIR="$(python -c 'import fastmlp; print(fastmlp.get_cmake_dir())')"

and in CMakeLists.txt: ``find_package(fastmlp CONFIG REQUIRED)`` then
``target_link_libraries(app PRIVATE fastmlp::core)``. A wheel built by scikit-build-core installs the
headers in fastmlp/include, the static library libfastmlp_core.a in fastmlp/lib and the CMake package
files in fastmlp/lib/cmake/fastmlp (CMakeLists.txt, "install the C++ core").
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["get_cmake_dir", "get_include"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _installed(path: Path, marker: str) -> str:
    if not (path / marker).is_file():
        raise RuntimeError(
            f"fastmlp at {_PACKAGE_DIR} was not installed with its C++ files ({path / marker} is missing): "
            "install it as a wheel (pip install .), or build and `cmake --install` the core and use "
            "find_package(fastmlp) with CMAKE_PREFIX_PATH set to that prefix"
        )
    return str(path)


def get_cmake_dir() -> str:
    """The directory of fastmlpConfig.cmake: pass it as fastmlp_DIR (or put it on CMAKE_PREFIX_PATH)."""
    return _installed(_PACKAGE_DIR / "lib" / "cmake" / "fastmlp", "fastmlpConfig.cmake")


def get_include() -> str:
    """The directory that holds the core's headers, included as "fastmlp/engine.h" and so on."""
    return _installed(_PACKAGE_DIR / "include", "fastmlp/engine.h")
