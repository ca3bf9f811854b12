package telemetry

// RSSGrowthMin is how far a VM's QEMU RSS must have grown since its last
// non-zero RAM count before a plan adds the growth to the count: below it
// the growth is QEMU's own allocations (translation cache, buffers), not
// guest pages.
const RSSGrowthMin = 32 << 20

// NonZeroNow is the non-zero RAM to plan with at the time of a plan: the
// last count, plus what QEMU's resident memory grew since that count (a
// guest that filled memory after it was counted faults in new pages, and
// each one it filled with data is sent by round 1), never more than the
// guest's RAM. grown is the growth added (0 when below RSSGrowthMin or when
// either RSS is unknown).
func NonZeroNow(count, rssAtCount, rssNow, memBytes int64) (bytes, grown int64) {
	if rssAtCount > 0 && rssNow-rssAtCount >= RSSGrowthMin {
		grown = rssNow - rssAtCount
	}
	bytes = count + grown
	if memBytes > 0 && bytes > memBytes {
		grown -= bytes - memBytes
		bytes = memBytes
	}
	return bytes, grown
}
