//! Private network namespaces for integration tests, so a test can put real server
//! processes on separate "hosts" and cut them off from each other.
//!
//! A [`Lab`] is a bridge in the root namespace plus one namespace per host, each joined to
//! the bridge by a veth pair, all in one /24 of 198.18.0.0/15 (the benchmarking range, never
//! routed on the internet). The test process itself, in the root namespace, reaches every
//! host, and hosts reach it at [`Lab::gateway`]. Hosts get no default route: nothing they
//! send can leave the machine, even where the root namespace forwards packets.
//!
//! Needs root and `ip` (iproute2). Dropping a `Lab` (also while a test panics) kills what
//! still runs in its namespaces and removes the namespaces, veths and bridge. What a killed
//! test process left behind is removed by the next [`Lab::new`] on the machine.

use std::ffi::OsStr;
use std::fs::{self, File, TryLockError};
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Starts every bridge, veth and namespace name, followed by the subnet number, which is
/// how leftovers of crashed runs are recognised.
const PREFIX: &str = "netlab";
/// One lock file per subnet. A flock is released when its holder dies, so a crashed test
/// never keeps a subnet, and holding it proves that nobody else uses the subnet.
const LOCK_DIR: &str = "/run/netlab";
/// 198.18.0.0/15 holds 512 /24s.
const SUBNETS: u16 = 512;
/// Hosts are numbered from .10 and must stay below the broadcast address.
const MAX_HOSTS: usize = 240;

/// Labs made by this process, to tell namespace names of successive Labs apart.
static LABS: AtomicU32 = AtomicU32::new(0);

/// A bridge and `hosts` network namespaces on a private /24, removed on drop.
#[derive(Debug)]
pub struct Lab {
    subnet: u16,
    bridge: String,
    hosts: Vec<Host>,
    /// Released only after `drop` has removed everything, so no new Lab reuses the names
    /// and subnet while they still exist.
    _lock: File,
}

#[derive(Debug)]
struct Host {
    ns: String,
    veth: String,
    ip: Ipv4Addr,
}

impl Lab {
    /// Creates a bridge in the root namespace with address `<subnet>.1/24`, and `hosts`
    /// namespaces where host `i` has `<subnet>.(10+i)/24` on `eth0` and loopback up.
    /// The subnet differs from that of every other Lab alive on the machine.
    pub fn new(hosts: usize) -> io::Result<Lab> {
        if hosts > MAX_HOSTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a Lab holds at most {MAX_HOSTS} hosts"),
            ));
        }
        let (subnet, lock) = claim_subnet()?;
        sweep_leftovers(subnet);
        let mut lab = Lab {
            subnet,
            bridge: format!("{PREFIX}{subnet}"),
            hosts: Vec::with_capacity(hosts),
            _lock: lock,
        };
        // On error `lab` drops here, which removes whatever was built so far.
        lab.build(hosts)?;
        Ok(lab)
    }

    /// Like [`Lab::new`], but `Ok(None)` where namespaces can't be made at all (not root,
    /// no `ip`, no veth or bridge support), so a test can report that it was skipped.
    pub fn try_new(hosts: usize) -> io::Result<Option<Lab>> {
        match Lab::new(hosts) {
            Ok(lab) => Ok(Some(lab)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                ) =>
            {
                eprintln!("netns: cannot create network namespaces here: {e}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Host `host`'s address. Panics if there is no such host.
    pub fn ip(&self, host: usize) -> Ipv4Addr {
        self.hosts[host].ip
    }

    /// The bridge's address: where hosts reach the test process.
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// Name of host `host`'s namespace, for `ip netns exec` and friends.
    pub fn ns_name(&self, host: usize) -> &str {
        &self.hosts[host].ns
    }

    /// A command running `program` in host `host`'s namespace. `ip netns exec` execs the
    /// program, so the child's pid is the program's and `Child::kill` reaches it; whatever
    /// still runs in the namespace when the Lab drops is killed.
    pub fn command(&self, host: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns_name(host)]).arg(program);
        cmd
    }

    /// Cuts host `host` off from the bridge, so from the other hosts and the test process,
    /// in both directions; it still reaches itself. Packets are dropped silently, so a
    /// connect times out, until ARP gives up on the host after ~30 s: then connects to it
    /// may fail with `HostUnreachable` after ~3 s instead.
    pub fn isolate(&self, host: usize) -> io::Result<()> {
        ip(&["link", "set", &self.hosts[host].veth, "down"]).map(drop)
    }

    /// Undoes [`Lab::isolate`]; connectivity is back within milliseconds.
    pub fn heal(&self, host: usize) -> io::Result<()> {
        let healed = &self.hosts[host];
        ip(&["link", "set", &healed.veth, "up"])?;
        // After ~30 s cut off, ARP entries for and on the host have failed, and a failed or
        // half-resolved entry would hold traffic back for up to a second: start afresh.
        let to = healed.ip.to_string();
        ip(&["neigh", "flush", "to", &to, "dev", &self.bridge])?;
        ip(&["-n", &healed.ns, "neigh", "flush", "dev", "eth0"])?;
        for other in self.hosts.iter().filter(|h| h.ns != healed.ns) {
            ip(&["-n", &other.ns, "neigh", "flush", "to", &to])?;
        }
        Ok(())
    }

    fn addr(&self, last: u8) -> Ipv4Addr {
        let [hi, lo] = self.subnet.to_be_bytes();
        Ipv4Addr::new(198, 18 + hi, lo, last)
    }

    fn build(&mut self, hosts: usize) -> io::Result<()> {
        let [_, b, c, _] = self.gateway().octets();
        // A bridge without a set address takes its lowest port's, which changes as ports
        // come and go and would leave hosts with a stale ARP entry for the gateway.
        let mac = format!("02:00:c6:{b:02x}:{c:02x}:01");
        // No STP, so a port forwards the moment it is up (that is what makes `heal` quick).
        #[rustfmt::skip]
        ip(&["link", "add", &self.bridge, "address", &mac, "type", "bridge",
             "stp_state", "0", "forward_delay", "0"])?;
        let cidr = format!("{}/24", self.gateway());
        ip(&["addr", "add", &cidr, "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])?;

        let id = LABS.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}.{id}", std::process::id());
        for i in 0..hosts {
            let host = Host {
                ns: format!("{PREFIX}{}.{id}.h{i}", self.subnet),
                veth: format!("{PREFIX}{}v{i}", self.subnet),
                ip: self.addr(10 + i as u8),
            };
            ip(&["netns", "add", &host.ns])?;
            let (ns, veth) = (host.ns.clone(), host.veth.clone());
            // Pushed before the veth exists, so a failure below still cleans up.
            self.hosts.push(host);
            // The peer is born inside the namespace, so it can be called eth0 there.
            #[rustfmt::skip]
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let cidr = format!("{}/24", self.ip(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            remove_namespace(&host.ns);
            // Deleting our end takes the pair down now, even while a dying process still
            // pins the namespace; it usually fails because the pair is gone already.
            let _ = ip(&["link", "del", &host.veth]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Runs `ip`, returning its stdout. Errors say whether namespaces are impossible here
/// (`PermissionDenied`, `Unsupported`) or something else went wrong.
fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                io::Error::new(io::ErrorKind::Unsupported, "`ip` (iproute2) is missing")
            }
            _ => e,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kind = if stderr.contains("Operation not permitted") || stderr.contains("Permission denied")
    {
        io::ErrorKind::PermissionDenied
    } else if stderr.contains("Unknown device type") {
        io::ErrorKind::Unsupported
    } else {
        io::ErrorKind::Other
    };
    Err(io::Error::new(
        kind,
        format!("ip {}: {}", args.join(" "), stderr.trim()),
    ))
}

/// The lowest subnet no other Lab holds, with its lock.
fn claim_subnet() -> io::Result<(u16, File)> {
    fs::create_dir_all(LOCK_DIR)
        .map_err(|e| io::Error::new(e.kind(), format!("{LOCK_DIR}: {e}")))?;
    for n in 0..SUBNETS {
        if let Some(lock) = try_lock(n)? {
            return Ok((n, lock));
        }
    }
    Err(io::Error::other(
        "every subnet of 198.18.0.0/15 is taken by a live Lab",
    ))
}

fn try_lock(subnet: u16) -> io::Result<Option<File>> {
    let path = format!("{LOCK_DIR}/{subnet}");
    let file = File::options()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Removes namespaces and links of Labs whose process died without dropping them: those
/// of our own subnet, and those of subnets whose lock is free.
fn sweep_leftovers(mine: u16) {
    let (namespaces, links) = our_names();
    let mut subnets: Vec<u16> = namespaces
        .iter()
        .chain(&links)
        .filter_map(|n| subnet_of(n))
        .collect();
    subnets.sort_unstable();
    subnets.dedup();
    for subnet in subnets {
        // Held while deleting, so a Lab starting meanwhile can't take the subnet and
        // have its fresh bridge deleted by name.
        let _lock = if subnet == mine {
            None
        } else {
            match try_lock(subnet) {
                Ok(Some(lock)) => Some(lock),
                _ => continue,
            }
        };
        // Listed again now that nobody can add to them: the first list may have been
        // taken while the crashed Lab was still being built, and miss some.
        let (namespaces, links) = our_names();
        for ns in namespaces.iter().filter(|n| subnet_of(n) == Some(subnet)) {
            remove_namespace(ns);
        }
        for link in links.iter().filter(|n| subnet_of(n) == Some(subnet)) {
            let _ = ip(&["link", "del", link]);
        }
    }
}

/// Names of namespaces, and of links in the root namespace, that this module may have made.
fn our_names() -> (Vec<String>, Vec<String>) {
    let names = |args: &[&str], name_of: fn(&str) -> Option<&str>| -> Vec<String> {
        let listing = ip(args).unwrap_or_default();
        let names = listing.lines().filter_map(name_of);
        names
            .filter(|n| subnet_of(n).is_some())
            .map(str::to_owned)
            .collect()
    };
    (
        // "netlab3.123.0.h0 (id: 2)"
        names(&["netns", "list"], |l| l.split_whitespace().next()),
        // "7: netlab3v0@if2: <BROADCAST,..."
        names(&["-o", "link", "show"], |l| {
            l.split(": ").nth(1)?.split('@').next()
        }),
    )
}

/// The subnet in a name this module made: "netlab3" (bridge), "netlab3v0" (veth) or
/// "netlab3.<pid>.<lab>.h0" (namespace).
fn subnet_of(name: &str) -> Option<u16> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (number, tail) = rest.split_at(digits);
    let subnet = number.parse().ok().filter(|&n| n < SUBNETS)?;
    (tail.is_empty() || tail.starts_with(['v', '.'])).then_some(subnet)
}

fn remove_namespace(ns: &str) {
    // A process left inside keeps the namespace, and its veth, alive after `ip netns del`.
    let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
    if !pids.trim().is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.split_whitespace())
            .stderr(Stdio::null())
            .status();
    }
    let _ = ip(&["netns", "del", ns]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::panic::{self, AssertUnwindSafe};
    use std::process::Child;
    use std::thread;
    use std::time::{Duration, Instant};

    /// Every host has its own port space, so tests running in parallel can share a port.
    const PORT: u16 = 8000;

    /// Prints the status of GET argv[1], or the error, with a 1 s timeout.
    const CLIENT: &str = r#"
import sys, urllib.request as u
try:
    # No proxies: a test machine's http_proxy must not see, or answer, the request.
    print(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=1).status)
except Exception as e:
    print(type(e).__name__, e)
"#;

    /// The project's tests run as root (see README); without namespaces they fail loudly.
    fn lab(hosts: usize) -> Option<Lab> {
        let lab = Lab::try_new(hosts).expect("creating a lab");
        assert!(
            lab.is_some(),
            "network namespaces are not available (root and iproute2 needed)"
        );
        lab
    }

    /// Kills the server when the test ends, passed or failed.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `python3 -m http.server` on `host`, once it answers the root namespace.
    fn serve(lab: &Lab, host: usize) -> Server {
        let child = lab
            .command(host, "python3")
            .args(["-m", "http.server", "--bind", &lab.ip(host).to_string()])
            .arg(PORT.to_string())
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting python3");
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while get(lab.ip(host)).is_err() {
            assert!(
                Instant::now() < deadline,
                "http.server on host {host} never answered"
            );
            thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// GET / from the root namespace, with a 1 s connect timeout; the status line.
    fn get(ip: Ipv4Addr) -> io::Result<String> {
        let addr = SocketAddr::from((ip, PORT));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        let reply = String::from_utf8_lossy(&reply);
        Ok(reply.lines().next().unwrap_or_default().to_owned())
    }

    /// GET `url` from inside host `from`: "200", or the Python error.
    fn get_from(lab: &Lab, from: usize, url: &str) -> String {
        let out = lab
            .command(from, "python3")
            .args(["-c", CLIENT, url])
            .output()
            .expect("running python3");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn url(ip: Ipv4Addr) -> String {
        format!("http://{ip}:{PORT}/")
    }

    fn namespaces() -> Vec<String> {
        let listed = ip(&["netns", "list"]).expect("ip netns list");
        listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn isolate_and_heal_a_real_server() {
        let Some(lab) = lab(3) else { return };
        let _server = serve(&lab, 1);
        assert!(get(lab.ip(1)).unwrap().contains(" 200 "));
        assert_eq!(get_from(&lab, 2, &url(lab.ip(1))), "200");

        // Hosts reach the test process too, at the gateway address.
        let listener = TcpListener::bind((lab.gateway(), 0)).unwrap();
        let root_url = format!("http://{}/", listener.local_addr().unwrap());
        let responder = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0; 1024];
            let _ = conn.read(&mut request).unwrap();
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        });
        assert_eq!(get_from(&lab, 0, &root_url), "200");
        responder.join().unwrap();

        lab.isolate(1).unwrap();
        let started = Instant::now();
        let err = get(lab.ip(1)).expect_err("the isolated host answered the root namespace");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(900));
        let from_peer = get_from(&lab, 2, &url(lab.ip(1)));
        assert!(from_peer.contains("timed out"), "host 2 got: {from_peer}");
        // Cut off from the others, but not from itself (that goes over its loopback).
        assert_eq!(get_from(&lab, 1, &url(lab.ip(1))), "200");
        // Only host 1 is cut off: host 2 answers, with a refusal as nothing listens there.
        assert_eq!(
            get(lab.ip(2)).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );

        lab.heal(1).unwrap();
        let healed = Instant::now();
        let mut attempts = 1;
        while let Err(e) = get(lab.ip(1)) {
            assert!(
                healed.elapsed() < Duration::from_secs(5),
                "still cut off: {e}"
            );
            attempts += 1;
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "reachable {:?} after heal, attempt {attempts}",
            healed.elapsed()
        );
        assert_eq!(get_from(&lab, 2, &url(lab.ip(1))), "200");
    }

    #[test]
    fn labs_alive_together_are_separate() {
        let (Some(a), Some(b)) = (lab(1), lab(1)) else {
            return;
        };
        assert_ne!(a.gateway(), b.gateway());
        assert_ne!(a.bridge, b.bridge);
        assert_ne!(a.ns_name(0), b.ns_name(0));
        let _a = serve(&a, 0);
        let _b = serve(&b, 0);
        // No route out of a Lab: a host can't even send toward another Lab or the internet.
        for target in [b.ip(0), Ipv4Addr::new(192, 0, 2, 1)] {
            let reply = get_from(&a, 0, &url(target));
            assert!(reply.contains("unreachable"), "{target}: {reply}");
        }
    }

    #[test]
    fn drop_removes_everything_even_after_a_panic() {
        let mut built = None;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let Some(lab) = lab(2) else { return };
            // A process left running inside must not keep anything alive.
            let sleeper = lab.command(1, "sleep").arg("600").spawn().unwrap();
            let index = ip(&["-o", "link", "show", "dev", &lab.bridge]).unwrap();
            let index = index.split(':').next().unwrap().to_owned();
            let names = [lab.ns_name(0).to_owned(), lab.ns_name(1).to_owned()];
            assert!(names.iter().all(|n| namespaces().contains(n)));
            built = Some((sleeper, index, names));
            panic!("deliberate panic inside a Lab");
        }));
        let Some((mut sleeper, index, names)) = built else {
            return;
        };
        assert!(outcome.is_err());
        let listed = namespaces();
        assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
        // By index, since a parallel test may already have a new bridge with the same name.
        let links = ip(&["-o", "link", "show"]).unwrap();
        assert!(
            !links.lines().any(|l| l.starts_with(&format!("{index}:"))),
            "{links}"
        );
        assert_eq!(sleeper.wait().unwrap().code(), None, "sleep was not killed");
    }

    /// The child half of `leftovers_of_a_killed_process_are_swept`: builds a Lab and exits
    /// without dropping it, like a test binary killed mid-run.
    fn crash_with_a_lab() {
        let lab = Lab::new(2).unwrap();
        let mut out = io::stdout();
        writeln!(
            out,
            "LEFTOVER {}\nLEFTOVER {}",
            lab.ns_name(0),
            lab.ns_name(1)
        )
        .unwrap();
        out.flush().unwrap();
        std::process::exit(0);
    }

    #[test]
    fn leftovers_of_a_killed_process_are_swept() {
        // Re-run as the child (this same test in a new process) when the parent asks.
        if std::env::var_os("NETLAB_CRASH").is_some() {
            crash_with_a_lab();
        }
        let Some(_probe) = lab(0) else { return };
        // Test names leave out the crate: "tests::…" here, "netns::tests::…" elsewhere.
        let module = module_path!().split_once("::").unwrap().1;
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("{module}::leftovers_of_a_killed_process_are_swept"),
                "--exact",
            ])
            .arg("--nocapture")
            .env("NETLAB_CRASH", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let leftovers: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("LEFTOVER "))
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "child: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Our Lab sweeps them, unless a parallel test's Lab got their subnet first: then
        // that one does, and may still be at it.
        let _lab = Lab::new(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listed = namespaces();
            if !leftovers.iter().any(|n| listed.iter().any(|l| l == n)) {
                break;
            }
            assert!(Instant::now() < deadline, "not swept: {listed:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}
