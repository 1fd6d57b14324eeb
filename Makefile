# The two commands of the README, plus their parts.
.PHONY: dev test setup build bench

dev:      ## run Ackline locally: edge on workerd + demo app on http://127.0.0.1:8787
	bash scripts/dev.sh

test:     ## install what is missing, build, run every test suite
	bash scripts/test.sh

setup:    ## install the toolchain pieces that are missing
	bash scripts/setup.sh

build:    ## build the npm package, the demo app and the edge worker
	bash scripts/build.sh

bench:    ## benchmarks (not part of test): prints a table, writes target/bench/*.json
	bash scripts/bench.sh
