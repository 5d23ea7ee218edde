#!/usr/bin/env bash
# Runs the hardening tests (fault injection, bad-input matrix, churn), the filter-paths test
# (the fast path reads argument strings straight from server memory), the redirect-cache test
# (strings and replies the module keeps and hands to the server) and tests of moving slots
# (the caller's database read from the client struct, the quick paths, a big collection moved in
# pieces, module-type keys, keys the destination refuses) with every redis-server under
# `valgrind --leak-check=full`, then reports the leak records whose stack goes through
# libumcluster. Exit status 1 when there is one.
#
# Debian's redis-server uses the system jemalloc; --soname-synonyms makes valgrind replace it, so
# the module's RedisModule_Alloc blocks (which end in jemalloc's malloc) are tracked too.
# Smaller workloads than `make test`: valgrind slows the server down ~30x.
set -euo pipefail
cd "$(dirname "$0")/.."

LOGS="${VALGRIND_LOGS:-$(mktemp -d /tmp/umcluster-valgrind.XXXXXX)}"
mkdir -p "$LOGS"
export UMCLUSTER_SERVER_WRAPPER="valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite --soname-synonyms=somalloc=libjemalloc.so* --num-callers=30 --log-file=$LOGS/vg.%p.log"
export UMCLUSTER_MODULE="$PWD/target/debug/libumcluster.so" UMCLUSTER_BIN="$PWD/target/debug/umcluster"
export HARDENING_ROUNDS="${HARDENING_ROUNDS:-400}" CHURN_PUSHES="${CHURN_PUSHES:-40}"
export FILTER_PATHS_ROUNDS="${FILTER_PATHS_ROUNDS:-600}"

"${VENV:-.venv}/bin/python" -m pytest -q tests/python/test_hardening.py tests/python/test_churn.py \
    tests/python/test_filter_paths.py tests/python/test_redirect_cache.py \
    tests/python/test_migration.py::test_moving_slots_look_keys_up_in_the_callers_database \
    tests/python/test_migration.py::test_transactions_on_a_migrating_slot_keep_the_transaction_rules \
    tests/python/test_migration.py::test_a_big_collection_that_expires_midway_is_removed_from_the_destination_too \
    tests/python/test_migration.py::test_module_type_keys_move_whole_with_their_ttls_and_the_destinations_replica_follows \
    tests/python/test_migration.py::test_a_key_the_destination_cannot_take_stays_usable_here_and_the_rest_moves \
    tests/python/test_migration.py::test_collections_whose_dump_the_destination_refuses_move_in_pieces \
    "$@"

echo "valgrind logs: $LOGS"
grep -h "definitely lost:\|indirectly lost:\|ERROR SUMMARY" "$LOGS"/vg.*.log | sort | uniq -c
# A leak record is a paragraph starting with "blocks are definitely|indirectly lost".
leaks=$(awk '/blocks are (definitely|indirectly) lost/ {rec=$0; inrec=1; next}
             inrec && /^==[0-9]+== $/ {if (rec ~ /umcluster/) print rec "\n"; inrec=0; next}
             inrec {rec=rec "\n" $0}' "$LOGS"/vg.*.log)
if [ -n "$leaks" ]; then
    echo "leaks through libumcluster:"
    echo "$leaks"
    exit 1
fi
echo "no leak record goes through libumcluster"
