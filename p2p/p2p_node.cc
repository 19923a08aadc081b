#include "p2p/p2p_node.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "common/log.h"
#include "p2p/hot_units.h"
#include "p2p/peer_server.h"

namespace nydus::p2p {

// A fixed set of worker threads for origin fetches that feed streaming
// uploads; queued tasks run in order, and are dropped at shutdown.
class FetchPool {
 public:
  explicit FetchPool(size_t threads) {
    for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { run(); });
  }
  ~FetchPool() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  void submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> g(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
      // At shutdown queued fetches are dropped: the server that wanted them
      // is gone already (P2pNode stops it first).
      if (stopping_) return;
      auto task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

namespace {
constexpr size_t kFetchWorkers = 32;
}

P2pNode::P2pNode(P2pConfig config)
    : config_(std::move(config)),
      upload_limits_(config_.upload_rate, config_.upload_rate_per_peer),
      upload_slots_(config_.max_uploads) {}

P2pNode::~P2pNode() {
  health_.reset();
  mirror_.reset();
  server_.reset();
  pool_.reset();
  membership_.reset();
}

Result<std::unique_ptr<P2pNode>> P2pNode::start(const P2pConfig& config, DaemonHooks hooks) {
  if (config.unit_size == 0 || config.unit_size % config.granule_size != 0)
    return Status::invalid("p2p.unit_size must be a positive multiple of p2p.granule_size (" +
                           std::to_string(config.granule_size) + ")");
  std::unique_ptr<P2pNode> node(new P2pNode(config));
  node->hooks_ = std::move(hooks);
  NYDUS_ASSIGN(node->store_,
               PieceStore::open({config.store_dir, config.store_size, config.granule_size}));
  if (!config.secret_file.empty()) {
    NYDUS_ASSIGN(node->auth_, PeerAuth::load(config.secret_file, std::chrono::seconds(config.auth_window_s)));
  }
  if (!config.tls_cert.empty()) {
    NYDUS_ASSIGN(node->tls_, PeerTls::load(config.tls_cert, config.tls_key, config.tls_ca));
  }
  node->client_ = std::make_unique<PeerClient>(config);
  PeerClient* client = node->client_.get();
  client->set_auth(node->auth_.get());
  NYDUS_ASSIGN(node->membership_,
               Membership::start(config, nullptr, [client](const std::string& peer) { return client->ping(peer); }));
  client->set_self(node->membership_->self());
  node->pool_ = std::make_unique<FetchPool>(kFetchWorkers);
  NYDUS_ASSIGN(node->server_, PeerServer::start(*node, PeerServer::Role::kPeers));
  if (!config.mirror_listen.empty()) {
    NYDUS_ASSIGN(node->mirror_, PeerServer::start(*node, PeerServer::Role::kMirror));
  }
  if (!config.health_listen.empty()) {
    NYDUS_ASSIGN(node->health_, PeerServer::start(*node, PeerServer::Role::kHealth));
  }
  return node;
}

std::vector<std::string> P2pNode::owners(const std::string& digest, uint64_t unit, size_t limit) const {
  return with_view([&](const MemberView& view) { return unit_owners(view, digest, unit, limit); });
}

std::chrono::milliseconds P2pNode::previous_owner_window() const {
  // Long enough for every node to have re-resolved the new list, and for
  // the units in use to have been read once from their old owners.
  return std::chrono::milliseconds(std::max<uint64_t>(30000, 3ull * config_.dns_refresh_ms));
}

bool P2pNode::membership_changed_recently() const {
  return membership_->previous_members(previous_owner_window()) != nullptr;
}

MissPlan P2pNode::plan_miss(const std::string& digest, uint64_t unit) const {
  const bool fresh = just_started();
  return with_view(
      [&](const MemberView& view) { return p2p::plan_miss(view, digest, unit, config_.max_candidates, fresh); });
}

bool P2pNode::just_started() const { return std::chrono::steady_clock::now() - started_ < kOwnerDetourWindow; }

std::string P2pNode::fallback_owner(const std::string& digest, uint64_t unit, const std::string& asker) const {
  return with_view(
      [&](const MemberView& view) { return p2p::fallback_owner(view, digest, unit, asker, config_.max_candidates); });
}

Result<std::shared_ptr<StoredBlob>> P2pNode::stored_blob(const std::string& digest,
                                                         const std::function<Result<uint64_t>()>& size_fn) {
  if (auto blob = store_->find(digest)) return blob;
  NYDUS_ASSIGN(const uint64_t size, size_fn());
  return store_->open_blob(digest, size);
}

Result<backend::HttpResponse> P2pNode::origin_via_peers(const std::string& method, const std::string& origin,
                                                        const std::string& path_query,
                                                        const std::vector<std::string>& headers) {
  Result<backend::HttpResponse> last = Status::io("no other member to ask the origin " + origin);
  const std::string key = origin + path_query;
  for (const std::string& peer : owners(key, 0, config_.max_candidates)) {
    if (peer == self()) continue;
    metrics_.origin_via_peers.fetch_add(1, std::memory_order_relaxed);
    last = client_->forward_via(peer, method, origin, path_query, headers);
    if (last.ok() && last->status != 502) {
      membership_->report_success(peer);
      return last;
    }
    if (!last.ok()) membership_->report_failure(peer, false);
  }
  return last;
}

Result<uint64_t> P2pNode::size_from_owners(const BlobLocation& loc, const std::string& origin_error) {
  Result<uint64_t> last = Status::io("no other member to ask the size of blob " + loc.digest.substr(0, 12));
  for (const std::string& peer : owners(loc.digest, 0, config_.max_candidates)) {
    if (peer == self()) continue;
    last = client_->fetch_size(peer, loc);
    if (last.ok()) {
      LOG_INFO("p2p: blob %s: origin unavailable (%s); size %llu from peer %s", loc.digest.substr(0, 12).c_str(),
               origin_error.c_str(), static_cast<unsigned long long>(*last), peer.c_str());
      return last;
    }
  }
  return last;
}

void P2pNode::drain() {
  if (draining_.exchange(true, std::memory_order_acq_rel)) return;
  const auto start = std::chrono::steady_clock::now();
  LOG_INFO("p2p: draining: new peer requests get 503, waiting up to %u ms for uploads in flight",
           config_.drain_timeout_ms);
  const uint32_t left = upload_slots_.wait_idle(start + std::chrono::milliseconds(config_.drain_timeout_ms));
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  if (left == 0)
    LOG_INFO("p2p: drained in %lld ms", static_cast<long long>(took.count()));
  else
    LOG_WARN("p2p: %u uploads still in flight after %lld ms; they will be cut", left,
             static_cast<long long>(took.count()));
}

std::string P2pNode::not_ready() const {
  if (draining()) return "draining";
  if (hooks_.not_ready) return hooks_.not_ready();
  return "";
}

void P2pNode::submit(std::function<void()> task) { pool_->submit(std::move(task)); }

Status P2pNode::fetch_from_owner(const std::string& owner, const BlobLocation& loc, uint64_t blob_size,
                                 uint64_t offset, std::span<uint8_t> dst, std::string* source, bool direct,
                                 std::pair<uint64_t, uint64_t> needed) {
  const uint64_t end = offset + dst.size();
  if (needed.first >= needed.second || needed.first < offset || needed.second > end) needed = {offset, end};
  // The whole granules of `needed` (a holder has them), and the edges the
  // owner fills in.
  const uint64_t g = store_->granule_size();
  const uint64_t inner_begin = (needed.first + g - 1) / g * g;
  const uint64_t inner_end = needed.second == blob_size ? needed.second : needed.second / g * g;
  const bool holders_can_help = inner_begin < inner_end;
  // After a holder's answer: the edges from the owner, which always
  // serves them.
  auto fill_edges = [&]() -> Status {
    for (auto [b, e] : {std::pair{offset, inner_begin}, std::pair{inner_end, end}})
      if (b < e)
        NYDUS_TRY(client_->fetch_range(owner, loc, blob_size, b, dst.subspan(b - offset, e - b), {.no_redirect = true}));
    return Status::Ok();
  };

  const auto give_up_waiting = std::chrono::steady_clock::now() + std::chrono::milliseconds(config_.peer_stall_ms);
  auto wait = std::chrono::milliseconds(kWaitFirst);
  bool last_resort = direct;
  for (;;) {
    *source = owner;
    Referral referral;
    Status s = client_->fetch_range(owner, loc, blob_size, offset, dst, {.no_redirect = last_resort}, &referral);
    if (referral.holder.empty() && !referral.wait) return s;  // answered, or failed
    bool waited = referral.wait;
    const bool detour = referral.detour;
    if (!holders_can_help && !referral.holder.empty() && !detour) {
      last_resort = true;  // nothing a holder keeps: the owner serves
      continue;
    }
    for (int hops = 0; !referral.holder.empty() && hops < kMaxRedirectHops; ++hops) {
      const std::string holder = referral.holder;
      referral = {};
      if (!membership_->usable(holder)) {
        waited = !detour;
        break;
      }
      metrics_.redirects_followed.fetch_add(1, std::memory_order_relaxed);
      // The next owner of a detour fetched whole granules from the origin:
      // all of the range from it, not to be sent on or told to wait (the
      // owner would only detour again). A holder of a hot unit: see above.
      const bool whole = detour && hops == 0;
      s = whole ? client_->fetch_range(holder, loc, blob_size, offset, dst, {.held_only = true, .no_redirect = true},
                                       &referral)
                : client_->fetch_range(holder, loc, blob_size, inner_begin,
                                       dst.subspan(inner_begin - offset, inner_end - inner_begin),
                                       {.held_only = true}, &referral);
      if (s.ok()) {
        *source = holder;
        return whole ? s : fill_edges();
      }
      if (referral.wait) {
        waited = true;
      } else if (referral.holder.empty()) {
        if (s.code() != Code::kNotFound) membership_->report_failure(holder, false);
        waited = !detour;
      }
    }
    if (!waited) {
      last_resort = true;
      continue;
    }
    metrics_.waits_followed.fetch_add(1, std::memory_order_relaxed);
    std::this_thread::sleep_for(wait);
    wait = std::min(2 * wait, std::chrono::milliseconds(kWaitMax));
    if (std::chrono::steady_clock::now() >= give_up_waiting) last_resort = true;
  }
}

Status P2pNode::ensure_from_origin(StoredBlob& blob, const BlobLocation& loc, uint64_t offset, uint64_t length,
                                   std::chrono::steady_clock::time_point deadline) {
  auto fetch = [this, &loc](uint64_t off, uint64_t len, const StoredBlob::Sink& sink) -> Status {
    metrics_.origin_requests.fetch_add(1, std::memory_order_relaxed);
    return client_->fetch_origin(loc, off, len, [this, &sink](std::span<const uint8_t> bytes) {
      metrics_.origin_bytes.fetch_add(bytes.size(), std::memory_order_relaxed);
      return sink(bytes);
    });
  };
  return blob.ensure(offset, length, fetch, deadline);
}

}  // namespace nydus::p2p
