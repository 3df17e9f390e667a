# The large component for the compile-cache benchmark: a Python program
# made into a WASI 0.2 command by componentize-py (about 18 MB of Wasm).
import sys
from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        print("hello from python in wasmcell", sys.argv[1:])
