#include "p2p/membership.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>

#include "common/log.h"

namespace nydus::p2p {
namespace {

std::string numeric_address(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
  return buf;
}

Result<std::vector<std::string>> resolve_with_getaddrinfo(const std::string& name) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(name.c_str(), nullptr, &hints, &res);
  if (rc != 0) return Status::io("resolving " + name + ": " + gai_strerror(rc));
  std::set<std::string> out;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    std::string a = numeric_address(ai->ai_addr);
    if (!a.empty()) out.insert(a);
  }
  freeaddrinfo(res);
  return std::vector<std::string>(out.begin(), out.end());
}

std::set<std::string> local_addresses() {
  std::set<std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i; i = i->ifa_next)
    if (i->ifa_addr && (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6))
      out.insert(numeric_address(i->ifa_addr));
  freeifaddrs(list);
  return out;
}

bool wildcard(const std::string& addr) { return addr.empty() || addr == "0.0.0.0" || addr == "::"; }

}  // namespace

Result<std::pair<std::string, uint16_t>> split_host_port(const std::string& text, const std::string& what) {
  std::string host, port;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return Status::invalid(what + ": '" + text + "' is not [ADDR]:PORT");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon)
      return Status::invalid(what + ": '" + text + "' is not ADDR:PORT");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (host.empty()) return Status::invalid(what + ": '" + text + "' has no address");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    return Status::invalid(what + ": '" + text + "' has no valid port");
  const unsigned long p = std::stoul(port);
  if (p == 0 || p > 65535) return Status::invalid(what + ": port of '" + text + "' is out of range");
  return std::make_pair(host, static_cast<uint16_t>(p));
}

std::string join_host_port(const std::string& addr, uint16_t port) {
  if (addr.find(':') != std::string::npos) return "[" + addr + "]:" + std::to_string(port);
  return addr + ":" + std::to_string(port);
}

Membership::Membership(P2pConfig config, Resolver resolver, Prober prober)
    : config_(std::move(config)), resolver_(std::move(resolver)), prober_(std::move(prober)),
      health_(std::chrono::milliseconds(config_.failure_backoff_ms),
              std::chrono::milliseconds(config_.bad_data_backoff_ms)) {
  if (!resolver_) resolver_ = resolve_with_getaddrinfo;
  members_ = std::make_shared<const std::vector<std::string>>();
}

Result<std::unique_ptr<Membership>> Membership::start(const P2pConfig& config, Resolver resolver, Prober prober) {
  std::unique_ptr<Membership> m(new Membership(config, std::move(resolver), std::move(prober)));
  if (config.peers.empty() == config.peers_dns.empty())
    return Status::invalid("p2p: set exactly one of 'peers' and 'peers_dns'");
  NYDUS_ASSIGN(auto listen, split_host_port(config.listen, "p2p.listen"));
  std::vector<std::string> initial;
  for (const std::string& p : config.peers) {
    NYDUS_ASSIGN(auto hp, split_host_port(p, "p2p.peers"));
    initial.push_back(join_host_port(hp.first, hp.second));
  }
  if (!config.peers_dns.empty()) {
    NYDUS_ASSIGN(auto hp, split_host_port(config.peers_dns, "p2p.peers_dns"));
    m->dns_name_ = hp.first;
    m->dns_port_ = hp.second;
  }
  if (!config.advertise.empty()) {
    NYDUS_ASSIGN(auto hp, split_host_port(config.advertise, "p2p.advertise"));
    m->self_ = join_host_port(hp.first, hp.second);
  } else if (!wildcard(listen.first)) {
    m->self_ = join_host_port(listen.first, listen.second);
  }
  if (m->dns_name_.empty()) {
    m->set_members(std::move(initial));
  } else {
    m->refresh();
  }
  if (m->self_.empty()) {
    // The member that is an address of this host, on the listen port.
    const std::set<std::string> mine = local_addresses();
    for (const std::string& member : *m->members()) {
      auto hp = split_host_port(member, "member");
      if (hp.ok() && hp->second == listen.second && mine.count(hp->first)) {
        m->self_ = member;
        break;
      }
    }
    if (m->self_.empty()) {
      if (m->dns_name_.empty())
        return Status::invalid("p2p.advertise: no entry of 'peers' is an address of this host on port " +
                               std::to_string(listen.second) + "; set 'advertise'");
      for (const std::string& a : mine)
        if (a != "127.0.0.1" && a != "::1" && a.rfind("fe80", 0) != 0) {
          m->self_ = join_host_port(a, listen.second);
          break;
        }
      LOG_WARN("p2p: %s does not list this host yet; advertising %s (set p2p.advertise to choose)",
               m->dns_name_.c_str(), m->self_.c_str());
    }
  }
  LOG_INFO("p2p: this node is %s; %zu members%s%s", m->self_.c_str(), m->members()->size(),
           m->dns_name_.empty() ? "" : " from DNS name ", m->dns_name_.c_str());
  m->thread_ = std::thread([raw = m.get()] { raw->loop(); });
  return m;
}

Membership::~Membership() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<const std::vector<std::string>> Membership::members() const {
  std::lock_guard<std::mutex> g(mu_);
  return members_;
}

std::shared_ptr<const std::vector<std::string>> Membership::previous_members(Clock::duration within) const {
  std::lock_guard<std::mutex> g(mu_);
  if (!previous_ || Clock::now() - changed_at_ > within) return nullptr;
  return previous_;
}

bool Membership::usable(const std::string& member) const {
  std::lock_guard<std::mutex> g(mu_);
  return health_.usable(member);
}

void Membership::report_failure(const std::string& member, bool bad_data) {
  if (member == self_) return;
  std::lock_guard<std::mutex> g(mu_);
  const auto backoff = health_.report_failure(member, bad_data, Clock::now());
  if (backoff.count() > 0)
    LOG_WARN("p2p: peer %s is out of rendezvous for %u ms (%s)", member.c_str(),
             static_cast<unsigned>(backoff.count()), bad_data ? "its data failed verification" : "request failed");
}

void Membership::report_success(const std::string& member) {
  std::lock_guard<std::mutex> g(mu_);
  health_.report_success(member);
}

uint64_t Membership::membership_changes() const {
  std::lock_guard<std::mutex> g(mu_);
  return changes_;
}

void Membership::set_members(std::vector<std::string> members) {
  std::sort(members.begin(), members.end());
  members.erase(std::unique(members.begin(), members.end()), members.end());
  std::lock_guard<std::mutex> g(mu_);
  if (*members_ == members) return;
  if (!members_->empty() || changes_ > 0)
    LOG_INFO("p2p: membership changed: %zu -> %zu members", members_->size(), members.size());
  if (!members_->empty()) {
    previous_ = members_;
    changed_at_ = Clock::now();
  }
  members_ = std::make_shared<const std::vector<std::string>>(std::move(members));
  ++changes_;
}

void Membership::refresh() {
  if (dns_name_.empty()) return;
  auto answer = resolver_(dns_name_);
  if (!answer.ok()) {
    LOG_WARN("p2p: %s; keeping the last list", answer.status().message().c_str());
    return;
  }
  if (answer->empty()) return;
  std::vector<std::string> list;
  for (const std::string& a : *answer) list.push_back(join_host_port(a, dns_port_));
  set_members(std::move(list));
}

void Membership::loop() {
  Clock::time_point next_dns = Clock::now() + std::chrono::milliseconds(config_.dns_refresh_ms);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stopping_) break;
    const Clock::time_point now = Clock::now();
    const std::vector<std::string> due = health_.due(now);
    const bool dns_due = !dns_name_.empty() && now >= next_dns;
    if (due.empty() && !dns_due) continue;
    lock.unlock();
    if (dns_due) {
      refresh();
      next_dns = Clock::now() + std::chrono::milliseconds(config_.dns_refresh_ms);
    }
    for (const std::string& member : due) {
      const bool up = prober_ ? prober_(member) : false;
      std::lock_guard<std::mutex> g(mu_);
      if (health_.probed(member, up, Clock::now())) LOG_INFO("p2p: peer %s answers again", member.c_str());
    }
    lock.lock();
  }
}

}  // namespace nydus::p2p
