#include "test/sim/cluster_sim.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <unordered_map>

#include "p2p/hot_units.h"
#include "p2p/peer_health.h"
#include "p2p/placement.h"
#include "p2p/rendezvous.h"
#include "test/sim/holdings.h"
#include "test/sim/sim_link.h"

namespace nydus::sim {
namespace {

using HealthClock = p2p::PeerHealth::Clock;

HealthClock::time_point at(double seconds) {
  return HealthClock::time_point(std::chrono::duration_cast<HealthClock::duration>(std::chrono::duration<double>(seconds)));
}

std::string node_address(size_t i) {
  return "10." + std::to_string(i / 65536) + "." + std::to_string(i / 256 % 256) + "." + std::to_string(i % 256) +
         ":65002";
}

// One member list as DNS published it (the first `count` nodes to start),
// with the rendezvous orders computed on it so far.
struct MemberList {
  std::vector<std::string> members;  // sorted
  std::unordered_map<uint64_t, std::vector<size_t>> orders;  // by blob << 40 | unit
};

// The asker's loop around one owner (P2pNode::fetch_from_owner), kept
// across waits.
struct OwnerLoop {
  double wait = 0;     // the next wait; 0 = not told to wait yet
  double give_up = 0;  // waiting past this makes the next ask a last resort
  bool last_resort = false;
};

// The piece a node is reading, kept across waits.
struct Piece {
  bool busy = false;
  uint64_t len = 0;        // bytes of the read it covers
  uint32_t attempt = 0;    // fetches that failed verification so far
  bool planned = false;
  p2p::MissPlan plan;
  bool holders_asked = false;
  size_t next_peer = 0;
  OwnerLoop owner;
};

struct Node {
  Node(const p2p::P2pConfig& c)
      : health(std::chrono::milliseconds(c.failure_backoff_ms), std::chrono::milliseconds(c.bad_data_backoff_ms)),
        hot(c.spread_uploads) {}
  std::string address;
  double start = 0;
  double dies = kNever;
  bool bad = false;
  bool stale = false;
  p2p::PeerHealth health;
  p2p::HotUnits hot;
  std::vector<Holdings> blobs;
  SimLink up, down;
  double uploaded = 0;
  // Progress through the trace: the read and the offset inside it.
  size_t read = 0;
  uint64_t cursor = 0;
  Piece piece;
  double done = -1;
};

// The answer to one request to a peer.
struct Answer {
  enum Kind { kOk, kNotFound, kFailed, kWait } kind = kFailed;
  double at = 0;       // when the asker has the last byte, knows it failed, or comes back (kWait)
  uint32_t source = 0; // the node whose bytes arrived
};

struct Event {
  double t;
  uint64_t seq;
  enum Kind { kStep, kUploadEnd, kHold } kind;
  uint32_t node;    // kStep: the reader; kUploadEnd: the uploader; kHold: the downloader
  uint32_t blob = 0;
  uint64_t unit = 0;
  int64_t holder = -1;  // kUploadEnd: the asker that now holds [first, end) (-1: none)
  uint64_t first = 0, end = 0;  // kUploadEnd, kHold: the bytes
  bool operator>(const Event& o) const { return t != o.t ? t > o.t : seq > o.seq; }
};

class Simulation {
 public:
  Simulation(const Scenario& s, const AccessTrace& trace) : s_(s), trace_(trace), rng_(s.seed) {
    const double node_bps = s.node_gbit * 1e9 / 8, reg_bps = s.registry_gbit * 1e9 / 8;
    registry_.bytes_per_s = reg_bps;
    std::uniform_real_distribution<double> uniform(0, 1);
    for (size_t i = 0; i < s.nodes; ++i) {
      Node& n = nodes_.emplace_back(s.p2p);
      n.address = node_address(i);
      n.start = s.stagger_s > 0 ? uniform(rng_) * s.stagger_s : 0;
      n.blobs.resize(trace.blobs.size());
      n.up.bytes_per_s = n.down.bytes_per_s = node_bps;
      index_[n.address] = static_cast<uint32_t>(i);
    }
    // Start order decides DNS lists: the first `count` to start.
    by_start_.resize(s.nodes);
    for (size_t i = 0; i < s.nodes; ++i) by_start_[i] = static_cast<uint32_t>(i);
    std::stable_sort(by_start_.begin(), by_start_.end(),
                     [&](uint32_t a, uint32_t b) { return nodes_[a].start < nodes_[b].start; });
    starts_sorted_.reserve(s.nodes);
    for (uint32_t i : by_start_) starts_sorted_.push_back(nodes_[i].start);
    // Failures, on distinct random nodes.
    std::vector<uint32_t> pick(by_start_);
    std::shuffle(pick.begin(), pick.end(), rng_);
    const auto count_of = [&](double fraction) { return static_cast<size_t>(std::llround(fraction * s.nodes)); };
    size_t k = 0;
    for (size_t d = 0; d < count_of(s.die_fraction) && k < pick.size(); ++d) nodes_[pick[k++]].dies = s.die_at_s;
    for (size_t b = 0; b < count_of(s.bad_fraction) && k < pick.size(); ++b) nodes_[pick[k++]].bad = true;
    stale_new_ = count_of(s.stale_fraction) > 0 ? count_of(s.stale_new_fraction) : 0;
    // Stale nodes are among the older ones (the newest are the ones they miss).
    for (size_t i = 0, marked = 0; i + stale_new_ < s.nodes && marked < count_of(s.stale_fraction); ++i, ++marked)
      nodes_[by_start_[i]].stale = true;
    order_fn_ = [this](const std::vector<std::string>& members, std::string_view digest, uint64_t unit) {
      return cached_order(members, digest, unit);
    };
  }

  SimResult run() {
    for (uint32_t i = 0; i < nodes_.size(); ++i) push({nodes_[i].start, 0, Event::kStep, i});
    while (!queue_.empty()) {
      const Event e = queue_.top();
      queue_.pop();
      ++result_.events;
      if (e.kind == Event::kHold) {
        nodes_[e.node].blobs[e.blob].add(e.first, e.end, e.t);
        continue;
      }
      if (e.kind == Event::kUploadEnd) {
        nodes_[e.node].hot.end(trace_.blobs[e.blob].digest, e.unit, e.first, e.end,
                               e.holder >= 0 ? nodes_[e.holder].address : std::string());
        continue;
      }
      step(e.node, e.t);
    }
    return summarize();
  }

 private:
  const Scenario& s_;
  const AccessTrace& trace_;
  std::mt19937_64 rng_;
  std::deque<Node> nodes_;  // deque: Node holds a mutex (HotUnits), never moved
  std::unordered_map<std::string, uint32_t> index_;
  std::vector<uint32_t> by_start_;
  std::vector<double> starts_sorted_;
  size_t stale_new_ = 0;
  SimLink registry_;
  std::map<size_t, MemberList> lists_;  // by member count
  std::unordered_map<const std::vector<std::string>*, MemberList*> list_of_;
  p2p::OrderFn order_fn_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> queue_;
  uint64_t seq_ = 0;
  SimResult result_;

  static constexpr double kPublishPeriod = 1.0;  // seconds

  double hop() const { return s_.hop_latency_ms / 1000; }
  double peer_timeout() const { return s_.p2p.peer_timeout_ms / 1000.0; }
  double peer_stall() const { return s_.p2p.peer_stall_ms / 1000.0; }
  bool alive(const Node& n, double t) const { return t >= n.start && t < n.dies; }

  void push(Event e) {
    e.seq = seq_++;
    queue_.push(e);
  }

  const std::vector<size_t>* cached_order(const std::vector<std::string>& members, std::string_view digest,
                                          uint64_t unit) {
    auto it = list_of_.find(&members);
    if (it == list_of_.end()) return nullptr;
    uint32_t blob = 0;
    while (blob < trace_.blobs.size() && trace_.blobs[blob].digest != digest) ++blob;
    auto [o, fresh] = it->second->orders.try_emplace(static_cast<uint64_t>(blob) << 40 | unit);
    if (fresh) o->second = p2p::rendezvous_order(members, digest, unit);
    return &o->second;
  }

  MemberList& list(size_t count) {
    auto [it, fresh] = lists_.try_emplace(count);
    if (fresh) {
      for (size_t i = 0; i < count; ++i) it->second.members.push_back(nodes_[by_start_[i]].address);
      std::sort(it->second.members.begin(), it->second.members.end());
      list_of_[&it->second.members] = &it->second;
    }
    return it->second;
  }

  // How many members the DNS answer node `n` got at time `r` names: the
  // nodes started by the last publication (the cluster DNS publishes ready
  // endpoints about once a second), less the newest for a stale node within
  // stale_s.
  size_t published(const Node& n, double r) const {
    const double pub = std::floor(r / kPublishPeriod) * kPublishPeriod;
    size_t count = static_cast<size_t>(std::upper_bound(starts_sorted_.begin(), starts_sorted_.end(), pub) -
                                       starts_sorted_.begin());
    if (n.stale && r < starts_sorted_.front() + s_.stale_s) count = std::min(count, nodes_.size() - stale_new_);
    return count;
  }

  // The node's member list at `t` (from its last DNS refresh) and the one
  // before the last change while that change is recent (P2pNode's window).
  std::pair<MemberList*, MemberList*> lists_at(const Node& n, double t) {
    const double refresh = s_.p2p.dns_refresh_ms / 1000.0;
    const double window = std::max(30.0, 3 * refresh);
    const double last = n.start + std::floor((t - n.start) / refresh) * refresh;
    const size_t now = published(n, last);
    MemberList* previous = nullptr;
    for (double r = last; r - refresh >= n.start && t - r <= window; r -= refresh) {
      const size_t before = published(n, r - refresh);
      if (before != now) {
        previous = &list(before);
        break;
      }
    }
    return {&list(now), previous};
  }

  bool changed_recently(const Node& n, double t) { return lists_at(n, t).second != nullptr; }

  // Calls fn(MemberView) for node `i` at `t`, its due probes answered first.
  template <typename Fn>
  auto with_view(uint32_t i, double t, Fn fn) {
    Node& n = nodes_[i];
    for (const std::string& m : n.health.due(at(t))) n.health.probed(m, alive(nodes_[index_.at(m)], t), at(t));
    auto [now, previous] = lists_at(n, t);
    const std::function<bool(const std::string&)> usable = [&n](const std::string& m) { return n.health.usable(m); };
    return fn(p2p::MemberView{now->members, previous ? &previous->members : nullptr, n.address, usable, &order_fn_});
  }

  Answer failed(const Node& peer, double t) {
    ++result_.peer_failures;
    // Not started yet: refused at once. Gone: the asker's deadline.
    return {Answer::kFailed, t < peer.start ? t + 2 * hop() : t + peer_timeout()};
  }

  // Origin fetches by node `x` of what it lacks of [first, end).
  double fetch_origin(uint32_t x, uint32_t blob, uint64_t first, uint64_t end, double t) {
    Holdings& h = nodes_[x].blobs[blob];
    for (const auto& [b, e] : h.missing(first, end)) {
      const double arrived = transfer(registry_, nodes_[x].down, e - b, t + hop() + s_.registry_latency_ms / 1000);
      result_.origin_bytes += e - b;
      ++result_.origin_requests;
      h.add(b, e, arrived);
    }
    return h.ready_at(first, end);
  }

  // Sends [first, end) from `from` to `to`, the bytes there at `ready`.
  Answer send(uint32_t from, uint32_t to, uint64_t first, uint64_t end, double arrive, double ready) {
    Node& f = nodes_[from];
    const double done = std::max(transfer(f.up, nodes_[to].down, end - first, arrive), ready + hop());
    if (done > f.dies) {
      ++result_.peer_failures;
      return {Answer::kFailed, std::max(arrive, f.dies) + peer_stall()};
    }
    f.uploaded += static_cast<double>(end - first);
    return {Answer::kOk, done, from};
  }

  // An admitted upload from `from` to `to` of [first, end) whose bytes are
  // there at `ready`. HotUnits hears of its end when its last byte went
  // into the sender's socket: the send buffer's worth (at the link's rate)
  // before the asker has it.
  Answer upload(uint32_t from, uint32_t to, uint32_t blob, uint64_t unit, uint64_t first, uint64_t end,
                double arrive, double ready) {
    Answer a = send(from, to, first, end, arrive, ready);
    const bool ok = a.kind == Answer::kOk;
    const double rate = std::min(nodes_[from].up.bytes_per_s, nodes_[to].down.bytes_per_s);
    const double sent = std::max(arrive, a.at - static_cast<double>(std::min<uint64_t>(end - first,
                                                                                        s_.send_buffer_kib << 10)) /
                                                 rate);
    push({ok ? sent : std::min(a.at, nodes_[from].dies), 0, Event::kUploadEnd, from, blob, unit,
          ok ? static_cast<int64_t>(to) : -1, first, end});
    return a;
  }

  // Held bytes only, asked of a node that likely holds them (a previous or
  // next owner): served or not found, never sent on.
  Answer ask_held(uint32_t asker, uint32_t holder, uint32_t blob, uint64_t first, uint64_t end, double t) {
    const Node& h = nodes_[holder];
    if (!alive(h, t + hop())) return failed(h, t);
    const double ready = h.blobs[blob].ready_at(first, end);
    if (ready == kNever) return {Answer::kNotFound, t + 2 * hop()};
    return send(holder, asker, first, end, t + hop(), ready);
  }

  // A redirect chain from holder to holder (held bytes only): served, or
  // not (back to the owner). *waited: the owner is asked again after a
  // while (told to wait, or a hot unit's holder lacked the bytes or
  // failed), else it serves as a last resort (after a detour).
  Answer follow(uint32_t asker, std::string holder, uint32_t blob, uint64_t unit, uint64_t first, uint64_t end,
                double t, bool detour, bool* waited) {
    Node& a = nodes_[asker];
    for (int hops = 0; hops < p2p::kMaxRedirectHops; ++hops) {
      if (!a.health.usable(holder)) {
        *waited = *waited || !detour;
        return {Answer::kNotFound, t};
      }
      const uint32_t hi = index_.at(holder);
      Node& h = nodes_[hi];
      if (!alive(h, t + hop())) {
        Answer f = failed(h, t);
        a.health.report_failure(holder, false, at(f.at));
        *waited = *waited || !detour;
        return {Answer::kNotFound, f.at};
      }
      const double arrive = t + hop();
      const double ready = h.blobs[blob].ready_at(first, end);
      if (ready == kNever) {
        *waited = *waited || !detour;
        return {Answer::kNotFound, arrive + hop()};
      }
      // The next owner of a detour is asked not to send the asker on.
      const p2p::HotUnits::Admission adm =
          h.hot.admit(trace_.blobs[blob].digest, unit, first, end, a.address, detour && hops == 0);
      if (adm.kind == p2p::HotUnits::Admission::kServe) return upload(hi, asker, blob, unit, first, end, arrive, ready);
      if (adm.kind == p2p::HotUnits::Admission::kWait) {
        *waited = true;
        return {Answer::kNotFound, arrive + hop()};
      }
      ++result_.redirects;
      holder = adm.holder;
      t = arrive + hop();
    }
    return {Answer::kNotFound, t};
  }

  // The owner's side of a request for [first, end) (PeerServer::serve_blob)
  // and the asker's loop around it (P2pNode::fetch_from_owner), from where
  // `w` left it: an answer, or kWait with the time to come back (the loop's
  // state stays in `w`).
  Answer ask_owner(uint32_t asker, uint32_t owner, uint32_t blob, uint64_t unit, uint64_t first, uint64_t end,
                   double t, OwnerLoop& w) {
    Node& o = nodes_[owner];
    const std::string& digest = trace_.blobs[blob].digest;
    for (;;) {
      if (!alive(o, t + hop())) return failed(o, t);
      const double arrive = t + hop();
      // Just started and lacking the bytes: to the next owner first (a
      // redirect, as to a holder).
      std::string detour;
      if (!w.last_resort && o.blobs[blob].ready_at(first, end) == kNever &&
          arrive - o.start < p2p::kOwnerDetourWindow.count() && !changed_recently(o, arrive))
        detour = with_view(owner, arrive, [&](const p2p::MemberView& v) {
          return p2p::fallback_owner(v, digest, unit, nodes_[asker].address, s_.p2p.max_candidates);
        });
      const p2p::HotUnits::Admission adm =
          detour.empty() ? o.hot.admit(digest, unit, first, end, nodes_[asker].address, w.last_resort)
                         : p2p::HotUnits::Admission{p2p::HotUnits::Admission::kRedirect, detour};
      if (adm.kind == p2p::HotUnits::Admission::kServe) {
        double ready = o.blobs[blob].ready_at(first, end);
        if (ready == kNever) ready = fetch_origin(owner, blob, first, end, arrive);
        return upload(owner, asker, blob, unit, first, end, arrive, ready);
      }
      bool waited = adm.kind == p2p::HotUnits::Admission::kWait;
      double back = arrive + hop();
      if (adm.kind == p2p::HotUnits::Admission::kRedirect) {
        if (detour.empty()) ++result_.redirects;
        Answer a = follow(asker, adm.holder, blob, unit, first, end, back, !detour.empty(), &waited);
        if (a.kind == Answer::kOk) return a;
        back = a.at;
        if (!waited) {
          t = back;
          w.last_resort = true;
          continue;
        }
      }
      // Told to wait: come back later (as a new event: the world moves on
      // meanwhile), or as a last resort once waited long.
      ++result_.waits;
      if (w.wait == 0) {
        w.wait = p2p::kWaitFirst.count() / 1000.0;
        w.give_up = t + peer_stall();
      }
      const double resume = back + w.wait;
      w.wait = std::min(2 * w.wait, p2p::kWaitMax.count() / 1000.0);
      if (resume >= w.give_up) w.last_resort = true;
      return {Answer::kWait, resume};
    }
  }

  // Advances node `i`'s current piece (a read, or its part inside one
  // unit: PeerBackend's try_read and the chunk reader's retries) from `t`:
  // the time its bytes are there (true), or when to resume it (false).
  std::pair<bool, double> advance(uint32_t i, double t) {
    Node& n = nodes_[i];
    Piece& p = n.piece;
    const TraceRead& r = trace_.reads[n.read];
    const uint32_t blob = r.blob;
    const uint64_t off = r.offset + n.cursor;
    const uint64_t unit = off / s_.p2p.unit_size;
    const uint64_t len = std::min(r.offset + r.length, (unit + 1) * s_.p2p.unit_size) - off;
    Holdings& held = n.blobs[blob];
    const std::string& digest = trace_.blobs[blob].digest;
    const uint64_t size = trace_.blobs[blob].size, g = s_.p2p.granule_size;
    const uint64_t first = off / g * g, end = std::min(size, (off + len + g - 1) / g * g);
    if (!p.busy) {
      if (double ready = held.ready_at(off, off + len); ready != kNever) {
        p.len = len;
        return {true, std::max(t, ready)};
      }
      p = Piece{};
      p.busy = true;
      p.len = len;
    }
    while (p.attempt < s_.fetch_attempts) {
      if (!p.planned) {
        const bool just_started = t - n.start < p2p::kOwnerDetourWindow.count();
        p.plan = with_view(i, t, [&](const p2p::MemberView& v) {
          return p2p::plan_miss(v, digest, unit, s_.p2p.max_candidates, just_started);
        });
        p.planned = true;
        p.holders_asked = false;
        p.next_peer = 0;
        p.owner = OwnerLoop{};
        // As PeerBackend: after one verification failure the owners directly,
        // after two the origin.
        if (p.attempt >= 2) p.plan = p2p::MissPlan{};
        if (p.attempt == 1) {
          p.plan.previous_holder = p.plan.next_holder = "";
          p.owner.last_resort = true;
        }
      }
      Answer got{Answer::kNotFound, t};
      if (!p.holders_asked) {
        p.holders_asked = true;
        for (const std::string* holder : {&p.plan.previous_holder, &p.plan.next_holder}) {
          if (holder->empty() || got.kind == Answer::kOk || !n.health.usable(*holder)) continue;
          got = ask_held(i, index_.at(*holder), blob, first, end, t);
          if (got.kind == Answer::kFailed) n.health.report_failure(*holder, false, at(got.at));
          if (got.kind != Answer::kOk) t = got.at;
        }
      }
      while (got.kind != Answer::kOk && p.next_peer < p.plan.peers.size()) {
        got = ask_owner(i, index_.at(p.plan.peers[p.next_peer]), blob, unit, first, end, t, p.owner);
        if (got.kind == Answer::kWait) return {false, got.at};
        t = got.at;
        p.owner = OwnerLoop{.last_resort = p.attempt == 1};
        if (got.kind != Answer::kOk) {
          if (got.kind == Answer::kFailed) n.health.report_failure(p.plan.peers[p.next_peer], false, at(t));
          ++p.next_peer;
        }
      }
      if (got.kind == Answer::kOk) {
        if (nodes_[got.source].bad) {
          // The chunk reader's verification fails: the source is demoted
          // and the chunk fetched again.
          result_.bad_bytes += end - first;
          n.health.report_failure(nodes_[got.source].address, true, at(t));
          ++p.attempt;
          p.planned = false;
          continue;
        }
        n.health.report_success(nodes_[got.source].address);
        // Bytes from a peer enter the store once all of them arrived and
        // passed verification (PeerBackend::report_good), not while they
        // arrive (unlike an origin fetch of the store's own).
        push({got.at, 0, Event::kHold, i, blob, unit, -1, first, end});
        p.busy = false;
        return {true, got.at};
      }
      if (!p.plan.peers.empty()) ++result_.origin_fallbacks;
      p.busy = false;
      return {true, std::max(t, fetch_origin(i, blob, first, end, t))};
    }
    ++result_.failed_reads;
    p.busy = false;
    return {true, t};
  }

  void step(uint32_t i, double t) {
    Node& n = nodes_[i];
    if (t >= n.dies) return;
    if (n.read >= trace_.reads.size()) {
      n.done = t;
      return;
    }
    const auto [done, when] = advance(i, t);
    if (done) {
      n.cursor += n.piece.len;
      n.piece.len = 0;
      if (n.cursor >= trace_.reads[n.read].length) {
        ++n.read;
        n.cursor = 0;
      }
    }
    push({when, 0, Event::kStep, i});
  }

  SimResult summarize() {
    SimResult& r = result_;
    r.nodes = nodes_.size();
    r.unique_bytes = trace_.unique_bytes();
    std::vector<double> times;
    double upload_sum = 0;
    for (const Node& n : nodes_) {
      upload_sum += n.uploaded;
      r.max_upload_bytes = std::max(r.max_upload_bytes, n.uploaded);
      if (n.dies != kNever) ++r.died;
      if (n.done >= 0) times.push_back(n.done - n.start);
    }
    r.mean_upload_bytes = upload_sum / static_cast<double>(nodes_.size());
    r.completed = times.size();
    std::sort(times.begin(), times.end());
    auto pct = [&](double p) {
      if (times.empty()) return 0.0;
      const size_t k = static_cast<size_t>(std::ceil(p * static_cast<double>(times.size())));
      return times[std::min(times.size(), std::max<size_t>(k, 1)) - 1];
    };
    r.p50_s = pct(0.50);
    r.p99_s = pct(0.99);
    r.max_s = times.empty() ? 0 : times.back();
    return r;
  }
};

}  // namespace

SimResult simulate(const Scenario& scenario, const AccessTrace& trace) {
  Scenario alone = scenario;
  alone.nodes = 1;
  alone.stagger_s = 0;
  alone.die_fraction = alone.bad_fraction = alone.stale_fraction = 0;
  const SimResult one = Simulation(alone, trace).run();
  Scenario s = scenario;
  if (s.die_at_s < 0) s.die_at_s = one.max_s / 2;
  SimResult r = Simulation(s, trace).run();
  r.single_node_s = one.max_s;
  return r;
}

}  // namespace nydus::sim
