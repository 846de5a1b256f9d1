"""The fake-copy writer of every registered dataset, by name."""

from __future__ import annotations

from fakes import generic, industrial, medical

WRITERS = {
    "mvtec_ad": industrial.write_mvtec_ad,
    "visa": industrial.write_visa,
    "mpdd": industrial.write_mpdd,
    "btad": industrial.write_btad,
    "ksdd": industrial.write_ksdd,
    "ksdd2": industrial.write_ksdd2,
    "dagm": industrial.write_dagm,
    "dtd_synthetic": industrial.write_dtd_synthetic,
    "mvtec_3d": industrial.write_mvtec_3d,
    "real_iad": industrial.write_real_iad,
    "headct": medical.write_headct,
    "brainmri": medical.write_brainmri,
    "br35h": medical.write_br35h,
    "covid19": medical.write_covid19,
    "isic2016": medical.write_isic2016,
    "clinicdb": medical.write_clinicdb,
    "colondb": medical.write_colondb,
    "kvasir": medical.write_kvasir,
    "endo": medical.write_endo,
    "tn3k": medical.write_tn3k,
    "liverct": medical.write_liverct,
    "resc": medical.write_resc,
    "meta_json": generic.write_meta_json,
    "folder": generic.write_folder,
}
