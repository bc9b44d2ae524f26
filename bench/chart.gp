# gnuplot script for bench/run: four panels from the .dat files it writes
# (one row per test: label, then direct, HAProxy pair, kbridge; "-" = not run).
# Variables set with -e: out, title, rps, p99, cpu, bulk.
set terminal pngcairo size 1200,800 font "sans,10"
set output out
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set yrange [0:*]
set key inside top right vertical
set multiplot layout 2,2 title title font "sans,13"

set title "requests/s, thousands (higher is better)"
set xlabel "wrk connections"
set offsets 0, 0, graph 0.3, 0   # room for the key, shown once for all panels
plot rps using 2:xtic(1) title "direct" lc rgb "#9e9e9e", \
     "" using 3 title "HAProxy pair" lc rgb "#1f77b4", \
     "" using 4 title "kbridge" lc rgb "#d62728"

unset key
set offsets 0, 0, 0, 0
set title "p99 latency, ms (lower is better)"
plot p99 using 2:xtic(1) title "direct" lc rgb "#9e9e9e", \
     "" using 3 title "HAProxy pair" lc rgb "#1f77b4", \
     "" using 4 title "kbridge" lc rgb "#d62728"

set title "CPU seconds per 100,000 requests, backend + proxies (lower is better)"
plot cpu using 2:xtic(1) title "direct" lc rgb "#9e9e9e", \
     "" using 3 title "HAProxy pair" lc rgb "#1f77b4", \
     "" using 4 title "kbridge" lc rgb "#d62728"

set title "bulk transfer of one file, MB/s (higher is better)"
set xlabel ""
plot bulk using 2:xtic(1) title "direct" lc rgb "#9e9e9e", \
     "" using 3 title "HAProxy pair" lc rgb "#1f77b4", \
     "" using 4 title "kbridge" lc rgb "#d62728"

unset multiplot
