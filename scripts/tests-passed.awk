# How many tests the runners in a log reported passed: cargo's "test
# result: ok. N passed; ..." lines and pg_regress's "All N tests passed"
# (" All 12 tests passed. " on 15, "# All 12 tests passed." from 16 on).
# Prints the number, 0 when there is none.
#   awk -f scripts/tests-passed.awk LOG
/^test result: ok\./ { n += $4 }
match($0, /All [0-9]+ tests passed/) { split(substr($0, RSTART), words, " "); n += words[2] }
END { print n + 0 }
