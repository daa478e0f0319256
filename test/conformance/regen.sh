#!/usr/bin/env bash
# Rebuild the conformance fixtures (test/conformance/fixtures.ts) and rewrite their expected
# listings (test/conformance/expected/<fixture>.txt) from `umoci unpack` of each fixture image,
# then run the whole suite against them. Review the diff of expected/ before committing it: it is
# the oracle every reader is held to.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v umoci >/dev/null || bash test/setup/ensure-deps.sh
rm -f test/conformance/expected/*.txt
OCICHUNK_CONFORMANCE_WRITE=1 npx vitest run test/conformance.test.ts -t 'the checked-in listing is what umoci unpacks now'
npx vitest run test/conformance.test.ts
