//! What the benchmark reads from Linux and the few system calls it makes: kernel TCP
//! counters, per-process CPU, context switches and memory from `/proc`, the file limit,
//! clean-up on signals, and connects bound to a chosen loopback source address.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The kernel's TCP counters (`/proc/net/netstat` and `/proc/net/snmp`, the files `nstat`
/// reads) as `Prefix` + `Name` → value, e.g. `TcpExtTCPAbortOnClose`, `TcpOutRsts`. They
/// belong to the network namespace of this process.
pub fn tcp_counters() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut names = names.split_whitespace();
            let mut values = values.split_whitespace();
            let prefix = names.next().unwrap_or("").trim_end_matches(':');
            values.next();
            for (n, v) in names.zip(values) {
                if let Ok(v) = v.parse::<u64>() {
                    out.insert(format!("{prefix}{n}"), v);
                }
            }
        }
    }
    out
}

/// `after - before` for every counter present in both.
pub fn counter_deltas(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .filter_map(|(k, a)| before.get(k).map(|b| (k.clone(), *a as i64 - *b as i64)))
        .collect()
}

/// One look at a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// `utime + stime` from `/proc/PID/stat`, in clock ticks (whole process, dead threads
    /// included).
    pub cpu_ticks: u64,
    /// Time on a CPU summed over the live threads' `/proc/PID/task/*/schedstat`, in ns.
    pub run_ns: u64,
    /// Voluntary context switches summed over the live threads.
    pub voluntary: u64,
    /// Involuntary context switches summed over the live threads.
    pub involuntary: u64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `RssAnon`, KiB (heap, stacks).
    pub rss_anon_kib: u64,
    /// `RssFile`, KiB (the binary and shared libraries' pages in use).
    pub rss_file_kib: u64,
    /// `Threads`.
    pub threads: u64,
}

/// The value of `Key:` in a `/proc/.../status` text.
fn status_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Reads CPU time, context switches and memory of `pid`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (`state`);
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut s = ProcSample {
        cpu_ticks: field(11) + field(12),
        rss_kib: status_field(&status, "VmRSS"),
        rss_anon_kib: status_field(&status, "RssAnon"),
        rss_file_kib: status_field(&status, "RssFile"),
        threads: status_field(&status, "Threads"),
        ..ProcSample::default()
    };
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        // A thread may end between the listing and the read: skip it.
        if let Ok(text) = fs::read_to_string(dir.join("schedstat")) {
            s.run_ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(text) = fs::read_to_string(dir.join("status")) {
            s.voluntary += status_field(&text, "voluntary_ctxt_switches");
            s.involuntary += status_field(&text, "nonvoluntary_ctxt_switches");
        }
    }
    Ok(s)
}

/// Clock ticks per second (`utime`/`stime` unit).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Raises the soft limit of open files to the hard limit (children inherit it): the node
/// at 1,000 peers holds about three descriptors per peer, the load generator one.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit get a valid pointer to a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        let mut now: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
        now.rlim_cur as u64
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes a child get SIGKILL when this process dies, however it dies, so no node outlives
/// the benchmark.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as a pre_exec hook requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[allow(clippy::declare_interior_mutable_const)] // Only used to fill the array below.
const FREE: AtomicI32 = AtomicI32::new(0);
/// PIDs of running children, so a signal handler can stop them (0 = free slot).
static CHILDREN: [AtomicI32; 256] = [FREE; 256];

/// Remembers a child for the signal handler.
pub fn register_child(pid: u32) {
    for slot in &CHILDREN {
        if slot
            .compare_exchange(0, pid as i32, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

/// Forgets a child that was reaped.
pub fn forget_child(pid: u32) {
    for slot in &CHILDREN {
        let _ = slot.compare_exchange(pid as i32, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    for slot in &CHILDREN {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill is async-signal-safe; the PID is one of our unreaped children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) }
}

/// On SIGINT, SIGTERM or SIGHUP: kill the registered children by PID and exit.
pub fn install_signal_cleanup() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    sa
}

/// A blocking TCP connect to `dst` from the source address `src` (any port): the node sees
/// each load-generator connection come from its own IP.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the TcpStream takes
    // ownership right away, so every error path closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let from = sockaddr(SocketAddrV4::new(src, 0));
        if libc::bind(fd, &from as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let to = sockaddr(dst);
        loop {
            if libc::connect(fd, &to as *const _ as *const libc::sockaddr, len) == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EISCONN) {
                break;
            }
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A start line for several processes: each is forked and waits (in this program, before it
/// execs the real one) until the barrier is released, so N nodes start at the same instant.
pub struct Barrier {
    read: libc::c_int,
    write: libc::c_int,
}

/// The argument that makes this program wait on a barrier and then exec the rest of its
/// command line: `bench --exec-after-release FD PROGRAM ARGS...`.
pub const EXEC_AFTER_RELEASE: &str = "--exec-after-release";

impl Barrier {
    /// A new barrier (a pipe whose write end only this process holds).
    pub fn new() -> io::Result<Barrier> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Barrier {
            read: fds[0],
            write: fds[1],
        })
    }

    /// Makes `program args` wait for the barrier: the command runs this program with
    /// [`EXEC_AFTER_RELEASE`], which keeps the read end open across its exec.
    pub fn command(&self, program: &std::path::Path, args: &[std::ffi::OsString]) -> Command {
        let me = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let mut cmd = Command::new(me);
        cmd.arg(EXEC_AFTER_RELEASE)
            .arg(self.read.to_string())
            .arg(program)
            .args(args);
        let fd = self.read;
        // SAFETY: fcntl is async-signal-safe; fd is open in the child (inherited).
        unsafe {
            cmd.pre_exec(move || {
                libc::fcntl(fd, libc::F_SETFD, 0);
                Ok(())
            });
        }
        cmd
    }

    /// Lets every waiting process go at once: their reads see end-of-file.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for Barrier {
    fn drop(&mut self) {
        // SAFETY: closing the two descriptors this barrier owns.
        unsafe {
            libc::close(self.write);
            libc::close(self.read);
        }
    }
}

/// The waiting side of [`Barrier`]: `args` are `FD PROGRAM ARGS...`. Blocks until the
/// barrier is released, then replaces this process with `PROGRAM ARGS...` (same PID).
pub fn exec_after_release(args: &[std::ffi::OsString]) -> ! {
    let fd: libc::c_int = args
        .first()
        .and_then(|a| a.to_str()?.parse().ok())
        .unwrap_or(-1);
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reading into a local buffer from the inherited pipe.
        let n = unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
    }
    // SAFETY: the pipe is of no use to the program we become.
    unsafe {
        libc::close(fd);
    }
    let Some(program) = args.get(1) else {
        eprintln!("bench: {EXEC_AFTER_RELEASE} needs a program");
        std::process::exit(2);
    };
    let err = Command::new(program).args(&args[2..]).exec();
    eprintln!("bench: cannot exec {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}
