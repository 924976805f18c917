//! The guest side of `cargo xtask bench`: one shell script that runs every
//! round in one boot and prints its results as `BENCH ...` lines.

/// gupwatch's metrics port in the guest.
pub const GUEST_PORT: u16 = 10483;

/// The guest script. `@SECS@`, `@ROUNDS@`, `@CTRL@`, `@PORT@` and `@DET@`
/// are replaced; every result is a `BENCH ...` line on stdout, progress goes
/// to the console.
///
/// `DET=1` is the instruction-counting clock: there, C's scrapes come from
/// inside the guest, one per guest second starting half a second in, so
/// that every C run of S seconds holds exactly S scrapes whatever the host's
/// speed (scrapes paced by the host's clock would land a varying number of
/// times in a run whose length is counted in instructions).
///
/// O_DIRECT reads go to a memory-backed `null_blk` device with `irqmode=0`:
/// each request completes in the submitting context, so the loop never
/// waits for a device serviced in host time.
const GUEST_SCRIPT: &str = r#"S=@SECS@
R=@ROUNDS@
CTRL=@CTRL@
PORT=@PORT@
EMPTY=@EMPTY@
DET=@DET@
CAL=$(( S < 2 ? S : 2 ))
cs() { awk '{printf "%d\n", $1*100}' /proc/uptime; }
acq() { awk '$1=="nr_foll_pin_acquired" {print $2}' /proc/vmstat; }
calls() { timeout 10 wget -q -O - http://127.0.0.1:$PORT/metrics 2>/dev/null | awk '/^gupwatch_calls_total[{ ]/ {s+=$NF} END {printf "%.0f\n", s}'; }
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
kib() { awk -v k="$2:" '$1==k {print $2}' /proc/$1/status; }
bpfrun() { cat /proc/$1/fdinfo/* 2>/dev/null | awk '$1=="run_cnt:" {c+=$2} $1=="run_time_ns:" {t+=$2} END {printf "%.0f %.0f\n", c, t}'; }
ctl() { echo "$1" | timeout 5 nc 10.0.2.2 $CTRL >/dev/null 2>&1 || echo "BENCH warn control message not delivered: $1"; }
say() { echo "bench: $*" >&2; }
# The in-guest scraper of C under the counting clock (see the Rust side).
gscrape() {
    sleep 0.5
    while :; do
        if timeout 10 wget -q -O /dev/null http://127.0.0.1:$PORT/metrics 2>/dev/null; then
            echo ok >> /tmp/scrapes
        else
            echo failed >> /tmp/scrapes
        fi
        sleep 1
    done
}
cd /mnt/scratch
if ! gupwatch bench-workload --help >/dev/null 2>&1; then
    echo "BENCH error this gupwatch has no bench-workload subcommand"; exit 8
fi
DEV=""
# The initramfs ships null_blk and its dependencies (configfs) unloaded, in
# load order: load the dependencies, then null_blk with its parameters.
for m in $(cat /etc/gupwatch/modules.deferred); do
    [ "$m" = null_blk.ko ] || insmod "/lib/modules/$m" 2>>/tmp/nullblk.err
done
if insmod /lib/modules/null_blk.ko memory_backed=1 irqmode=0 bs=4096 gb=1 nr_devices=1 2>>/tmp/nullblk.err; then
    i=0
    while [ ! -b /dev/nullb0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi
if [ -b /dev/nullb0 ]; then
    DEV=/dev/nullb0
else
    echo "BENCH warn no null_blk device ($(tr '\n' ' ' < /tmp/nullblk.err)): O_DIRECT reads a file on the virtio disk, whose waits run in host time"
fi
KINDS="io-uring process-vm odirect"
echo "BENCH info kinds=$(echo $KINDS | tr ' ' ,) uname=$(uname -r) cpus=$(nproc) odirect=${DEV:-file} det=$DET"
# work KIND SECONDS: runs one workload; prints json=<its JSON line>.
work() {
    dev=""
    if [ "$1" = odirect ] && [ -n "$DEV" ]; then dev="--device $DEV"; fi
    J=$(gupwatch bench-workload --kind "$1" --seconds "$2" --scratch /mnt/scratch $dev) || return 1
    echo "json=$J"
}
D=""
scrape_on() {
    if [ $DET = 1 ]; then : > /tmp/scrapes; gscrape & SP=$!; else ctl "scrape on $1 $2 $3"; fi
}
scrape_off() {
    if [ $DET = 1 ]; then
        kill $SP; wait $SP 2>/dev/null
        extra="$extra scrapes=$(grep -c ok /tmp/scrapes) scrape_failed=$(grep -c failed /tmp/scrapes)"
    else
        ctl "scrape off $1 $2 $3"
    fi
}
one() {
    extra=""
    if [ -n "$D" ]; then h0=$(calls); c0=$(ticks $D); fi
    if [ "$1" = C ]; then scrape_on $1 $2 $3; fi
    a0=$(acq); t0=$(cs)
    out=$(work $3 $S) || { echo "BENCH error the $3 workload failed (mode $1, round $2)"; exit 5; }
    t1=$(cs); a1=$(acq)
    if [ -n "$D" ]; then c1=$(ticks $D); fi
    if [ "$1" = C ]; then scrape_off $1 $2 $3; fi
    if [ -n "$D" ]; then
        h1=$(calls)
        extra="$extra calls=$((h1 - h0)) dticks=$((c1 - c0)) hwm=$(kib $D VmHWM) rss=$(kib $D VmRSS)"
    fi
    echo "BENCH run mode=$1 round=$2 kind=$3 cs=$((t1 - t0)) pins=$((a1 - a0)) $extra $out"
}
start_daemon() {
    t0=$(cs)
    GUPWATCH_EMPTY_PROGRAMS=$EMPTY gupwatch run --listen 0.0.0.0:$PORT 2>>/tmp/daemon.err &
    D=$!
    i=0
    while ! timeout 5 wget -q -O /dev/null http://127.0.0.1:$PORT/healthz 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 240 ] || ! kill -0 $D 2>/dev/null; then
            echo "BENCH error gupwatch run did not start serving"; tail -20 /tmp/daemon.err >&2; exit 6
        fi
        sleep 0.5
    done
    echo "BENCH daemon_up round=$1 cs=$(( $(cs) - t0 )) ticks=$(ticks $D) hwm=$(kib $D VmHWM) rss=$(kib $D VmRSS)"
    # Let the daemon finish what it does after /healthz first answers:
    # how much of it is left depends on how long the wait above idled (host
    # time), and on 6.1 it moved the first B run's ratio by 4-19 %.
    sleep 3
}
stop_daemon() {
    echo "BENCH daemon_end round=$1 ticks=$(ticks $D) hwm=$(kib $D VmHWM) rss=$(kib $D VmRSS)"
    kill -TERM $D
    wait $D
    st=$?
    if [ $st -ne 0 ]; then echo "BENCH error gupwatch run exited with status $st"; tail -20 /tmp/daemon.err >&2; exit 7; fi
    D=""
}
say "warm-up (kinds: $KINDS)"
for k in $KINDS; do work $k 1 >/dev/null || { echo "BENCH error the $k workload failed (warm-up)"; exit 5; }; done
r=1
while [ $r -le $R ]; do
    say "round $r/$R: A, the workloads alone"
    for k in $KINDS; do one A $r $k; done
    start_daemon $r
    say "round $r/$R: B, gupwatch attached"
    for k in $KINDS; do one B $r $k; done
    say "round $r/$R: C, gupwatch attached, /metrics scraped every second"
    for k in $KINDS; do one C $r $k; done
    stop_daemon $r
    r=$((r + 1))
done
say "probe hits per operation and per program (kernel.bpf_stats_enabled, not timed)"
start_daemon 0
if echo 1 > /proc/sys/kernel/bpf_stats_enabled 2>/dev/null; then
    for k in $KINDS; do
        P0=$(gupwatch bench-bpfstats 2>/dev/null)
        set -- $(bpfrun $D); n0=$1; ns0=$2
        a0=$(acq); t0=$(cs)
        out=$(work $k $CAL) || { echo "BENCH error the $k workload failed (bpf_stats pass)"; exit 5; }
        t1=$(cs); a1=$(acq)
        set -- $(bpfrun $D)
        P1=$(gupwatch bench-bpfstats 2>/dev/null)
        echo "BENCH bpfstats kind=$k cs=$((t1 - t0)) pins=$((a1 - a0)) runs=$(($1 - n0)) run_ns=$(($2 - ns0)) $out"
        if [ -n "$P0" ] && [ -n "$P1" ]; then
            echo "BENCH bpfprogs kind=$k when=before json=$P0"
            echo "BENCH bpfprogs kind=$k when=after json=$P1"
        else
            echo "BENCH warn gupwatch bench-bpfstats gave nothing: no per-program shares for $k"
        fi
    done
    echo 0 > /proc/sys/kernel/bpf_stats_enabled
else
    echo "BENCH warn kernel.bpf_stats_enabled cannot be set: probe hits per op come from gupwatch_calls_total"
fi
stop_daemon 0
echo "BENCH done"
"#;

/// The guest script for these settings; `deterministic` selects the
/// in-guest scraper of C (see [`GUEST_SCRIPT`]); `empty`, programs that
/// return at once.
pub fn guest_script(seconds: u64, rounds: u32, ctrl_port: u16, deterministic: bool, empty: bool) -> String {
    GUEST_SCRIPT
        .replace("@EMPTY@", if empty { "1" } else { "0" })
        .replace("@SECS@", &seconds.to_string())
        .replace("@ROUNDS@", &rounds.to_string())
        .replace("@CTRL@", &ctrl_port.to_string())
        .replace("@PORT@", &GUEST_PORT.to_string())
        .replace("@DET@", if deterministic { "1" } else { "0" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_filled_in() {
        let s = guest_script(3, 2, 4444, true, false);
        assert!(s.starts_with("S=3\nR=2\nCTRL=4444\nPORT=10483\nEMPTY=0\nDET=1\n"));
        assert!(!s.contains('@'));
        assert!(guest_script(3, 2, 4444, false, true).contains("DET=0\n"));
    }
}
