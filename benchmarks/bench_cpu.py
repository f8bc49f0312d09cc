"""CPU benchmark against the memory-bandwidth floor (same as ``python -m numbaabn bench``).

    python benchmarks/bench_cpu.py [--json results.json] [--repeats 7] [--quick]
"""
import sys

from numbaabn.bench import main

if __name__ == "__main__":
    sys.exit(main())
