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

// CompressRatioNow is the compression ratio to plan with when a plan adds
// grown bytes to a RAM count whose sample found ratio (0: nothing was
// sampled): the grown pages were never sampled, so they are taken as
// incompressible. A guest that filled memory after its count (the bench's
// dirtier writes random data into its working set) would otherwise be
// planned at the ratio of the little RAM it had when counted: measured
// here, a 0.45 sample of 106 MiB where round 1 then sent 378 MiB at about
// 0.8.
func CompressRatioNow(ratio float64, count, grown int64) float64 {
	if ratio <= 0 || grown <= 0 || count < 0 {
		return ratio
	}
	return min((ratio*float64(count)+float64(grown))/float64(count+grown), 1)
}
