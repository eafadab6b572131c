# reproducible-builds.org/docs/source-date-epoch, "Perl": gmtime of SOURCE_DATE_EPOCH
set -eu
OUT=${OUT:-/out}
mkdir -p "$OUT"
perl -e 'use POSIX qw(strftime);
  my $t = $ENV{SOURCE_DATE_EPOCH} || time;
  print strftime("%Y-%m-%d %H:%M:%S", gmtime($t)), "\n";
  my @g = gmtime($t); printf "%04d-%02d-%02d\n", $g[5] + 1900, $g[4] + 1, $g[3];' > "$OUT/stamp.txt"
