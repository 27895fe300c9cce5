use super::Ack;
use slab::Slab;
use tracing::{info, trace};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
        }
    }
}

/// Vantage patch: what a logged message costs besides its topic and payload: its slot in
/// the segment and the allocator's header of the frame its topic and payload share.
const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<PublishData>() + 16;

// TODO: remove this from here
impl Storage for PublishData {
    // TODO: calculate size of publish properties as well!
    // Vantage patch: the overhead of an entry is counted, so a log's cap in bytes bounds its
    // memory (upstream counted topic and payload only: a log of small messages such as
    // heartbeats held more than twice its cap).
    fn size(&self) -> usize {
        let publish = &self.publish;
        4 + publish.topic.len() + publish.payload.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    /// Vantage patch: the filters with a `+` or `#` level, the only ones a topic must be
    /// matched against one by one (a concrete filter matches only the topic equal to it, found
    /// in `filter_indexes` by hash). Filters are never removed, like `filter_indexes`.
    wildcard_filters: Vec<(Filter, FilterIdx)>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// List of filters associated with a topic
    publish_filters: HashMap<Topic, Vec<FilterIdx>>,
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let mut wildcard_filters = Vec::new();
        let retained_publishes = HashMap::new();
        let publish_filters = HashMap::new();

        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let data = Data::new(&filter, &config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                if is_wildcard(&filter) {
                    wildcard_filters.push((filter.clone(), idx));
                }
                filter_indexes.insert(filter, idx);
            }
        }

        Ok(DataLog {
            config,
            native,
            publish_filters,
            filter_indexes,
            wildcard_filters,
            retained_publishes,
        })
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &Filter,
    ) -> Option<DataRequest> {
        let data = self
            .native
            .get_mut(*self.filter_indexes.get(filter)?)
            .unwrap();
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|&(conn_id, _)| conn_id == id)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        match &self.publish_filters.get(topic) {
            Some(v) => Some(v.to_vec()),
            None => {
                // Vantage patch: the concrete filter equal to the topic by hash, then only the
                // wildcard filters one by one (upstream matched every filter, so the first
                // publish on each of N agents' topics cost O(N) with N agents' own filters).
                let mut v: Vec<usize> = Vec::new();
                if !topic.starts_with('$') && !is_wildcard(topic) {
                    if let Some(filter_idx) = self.filter_indexes.get(topic) {
                        v.push(*filter_idx);
                    }
                }
                v.extend(
                    self.wildcard_filters
                        .iter()
                        .filter(|(filter, _)| matches(topic, filter))
                        .map(|(_, filter_idx)| *filter_idx),
                );

                if !v.is_empty() {
                    self.publish_filters.insert(topic.to_owned(), v.clone());
                }

                Some(v)
            }
        }
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let publish_filters = &mut self.publish_filters;
        let filter_indexes = &mut self.filter_indexes;

        let (filter_idx, data) = match filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let data = Data::new(filter, &self.config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                self.filter_indexes.insert(filter.to_owned(), idx);

                // Match new filter to existing topics and add to publish_filters if it matches.
                // Vantage patch: a concrete filter matches only the topic equal to it, looked
                // up by hash (upstream matched every known topic, O(N) per agent's filter).
                if is_wildcard(filter) {
                    for (topic, filters) in publish_filters.iter_mut() {
                        if matches(topic, filter) {
                            filters.push(idx);
                        }
                    }
                    self.wildcard_filters.push((filter.to_owned(), idx));
                } else if !filter.starts_with('$') {
                    if let Some(filters) = publish_filters.get_mut(filter) {
                        filters.push(idx);
                    }
                }

                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // unwrap to get index of `self.native` is fine here, because when a new subscribe packet
        // arrives in `Router::handle_device_payload`, it first calls the function
        // `next_native_offset` which creates a new commitlog if one doesn't exist. So any new
        // reads will definitely happen on a valid filter.
        let data = self.native.get(filter_idx).unwrap();
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        let data = self.native.get_mut(request.filter_idx).unwrap();
        data.waiters.register(id, request);
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for (_, data) in self.native.iter_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // Vantage patch: a concrete filter reads (and expires) only the retained message of
        // the topic equal to it, by hash; upstream expired and matched every retained message
        // on every subscription, O(N) per agent's subscription with N agents' retained topics.
        if !is_wildcard(filter) {
            if filter.starts_with('$') {
                return Vec::new();
            }
            let valid = match self.retained_publishes.get_mut(filter) {
                Some(pubdata) => still_valid(pubdata, now),
                None => return Vec::new(),
            };
            if !valid {
                self.retained_publishes.remove(filter);
                return Vec::new();
            }
            return self
                .retained_publishes
                .get(filter)
                .map(|p| (p.publish.clone(), p.properties.clone()))
                .into_iter()
                .collect();
        }

        // discard expired retained messages
        self.retained_publishes
            .retain(|_, pubdata| still_valid(pubdata, now));

        // no need to include timestamp when returning
        self.retained_publishes
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, p)| (p.publish.clone(), p.properties.clone()))
            .collect()
    }
}

/// Vantage patch: whether a filter has a wildcard level (`+` or `#`). A filter without one
/// matches exactly the topic equal to it (unless it starts with `$`, which no filter matches).
fn is_wildcard(filter: &str) -> bool {
    filter.split('/').any(|level| level == "+" || level == "#")
}

/// Whether a retained message is still within its expiry, counting down the interval it
/// will be delivered with (upstream's rule, moved out of `read_retained_messages` so the
/// concrete and the wildcard paths share it).
fn still_valid(pubdata: &mut PublishData, now: Instant) -> bool {
    // Keep data if no properties exists, which implies no message expiry!
    let Some(properties) = pubdata.properties.as_mut() else {
        return true;
    };

    // Keep data if there is no message_expiry_interval
    let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
        return true;
    };

    let time_spent = (now - pubdata.timestamp).as_secs() as u32;

    let is_valid = time_spent < *message_expiry_interval;

    // ignore expired messages
    if is_valid {
        // set message_expiry_interval to (original value - time spent waiting in server)
        // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
        *message_expiry_interval -= time_spent;
    }

    is_valid
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
    /// Vantage patch: `SegmentConfig::trim_read` of the filter.
    pub trim_read: bool,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;
        let mut trim_read = false;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                    trim_read = segment_config.trim_read;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        let waiters = Waiters::with_capacity(10);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
            trim_read,
        }
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append(item);
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        // Vantage patch: grown on demand; upstream reserved 100 acks and 100 QoS 2
        // publishes per connection up front (tens of KB each, for every idle agent).
        AckLog {
            committed: VecDeque::new(),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    /// Vantage patch: the indexed matching (concrete filters by hash, wildcard filters one by
    /// one) gives what upstream's match of every filter against every topic gave, whichever
    /// comes first, the subscription or the first publish, for `$` topics too.
    #[test]
    fn vantage_indexed_matching_agrees_with_matching_every_filter() {
        use crate::protocol::{matches, Publish};
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: Some(vec!["agents/+/hello".to_owned(), "x/y".to_owned()]),
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let filters = [
            "agents/a1/config",
            "agents/+/results",
            "$SYS/uptime",
            "agents/a1/cmd",
            "agents/#",
            "+/+/+",
            "agents/a2/config",
            "#",
            "status/+",
            "x/y",
            "a/b+c",
        ];
        let topics = [
            "agents/a1/config",
            "agents/a2/config",
            "agents/a1/results",
            "agents/a1/hello",
            "$SYS/uptime",
            "status/n1",
            "a/b/c",
            "a/b+c",
            "x/y",
            "agents/a1/cmd",
            "nobody/listens/here/at/all",
        ];
        let mut data = DataLog::new(config).unwrap();
        // Half the filters before the first publishes, half after.
        for filter in &filters[..5] {
            data.next_native_offset(filter);
        }
        for topic in &topics[..6] {
            data.matches(topic);
            data.insert_to_retained_publishes(
                Publish::new(bytes::Bytes::from(topic.to_string()), bytes::Bytes::from_static(b"r"), true),
                None,
                topic.to_string(),
            );
        }
        for filter in &filters[5..] {
            data.next_native_offset(filter);
        }
        for topic in &topics[6..] {
            data.insert_to_retained_publishes(
                Publish::new(bytes::Bytes::from(topic.to_string()), bytes::Bytes::from_static(b"r"), true),
                None,
                topic.to_string(),
            );
        }
        for topic in topics {
            let mut got = data.matches(topic).unwrap();
            got.sort_unstable();
            let mut want: Vec<usize> = data
                .filter_indexes
                .iter()
                .filter(|(filter, _)| matches(topic, filter))
                .map(|(_, idx)| *idx)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "filters matching topic {topic}");
        }
        for filter in filters.iter().copied().chain(["agents/+/hello", "nothing"]) {
            let mut got: Vec<String> = data
                .read_retained_messages(filter)
                .into_iter()
                .map(|(publish, _)| String::from_utf8(publish.topic.to_vec()).unwrap())
                .collect();
            got.sort_unstable();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|topic| matches(topic, filter))
                .map(|topic| topic.to_string())
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "retained messages for filter {filter}");
        }
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        data.matches("topic/a");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 1);
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}
